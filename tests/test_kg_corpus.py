"""The pretraining corpus never holds a FewCLUE label: chid's gold idiom is not filled into its blank."""

from __future__ import annotations

from datamodules.pretraining.corpus import CorpusSource, read_corpus, row_texts
from datamodules.tasks.rows import Row, read_rows
from datamodules.tasks.task_configs import load_task_specs


def test_a_labelled_chid_row_gives_the_text_either_side_of_the_blank():
    chid = load_task_specs(["chid"], None)[0]
    candidates = ["风云人物", "气势汹汹", "予取予求", "乘龙佳婿", "正中下怀", "天方夜谭", "心如刀割"]
    row = Row(242, {"left": "新八国联军", "right": "逼近附近海域", "candidates": candidates}, 1, "train_0.json", 1)
    assert row_texts(chid, row) == ["新八国联军", "逼近附近海域"]  # before: ["新八国联军气势汹汹逼近附近海域"]


def test_no_gold_idiom_of_any_split_reaches_the_corpus(shared_fewclue, tmp_path):
    chid = load_task_specs(["chid"], None)[0]
    source = CorpusSource(fewclue_dir=str(shared_fewclue), fewclue_tasks=["chid"], fewclue_split="all")
    sentences, counts = read_corpus(source, tmp_path)
    assert counts["fewclue/chid/train_few_all.json"] > 0
    corpus = "\n".join(sentences)
    unlabelled_source = CorpusSource(fewclue_dir=str(shared_fewclue), fewclue_tasks=["chid"], fewclue_train=False)
    unlabelled_only = "\n".join(read_corpus(unlabelled_source, tmp_path)[0])
    for k in range(5):
        rows = read_rows(chid, shared_fewclue / "chid" / f"train_{k}.json", labelled=True)
        assert len(rows) == 42
        filled = [r.fields["left"][-4:] + r.fields["candidates"][r.label] + r.fields["right"][:4] for r in rows]
        # Row 882 of train_2 is also in unlabeled.json as another article whose title quotes the idiom: that one is
        # plain text of the unlabelled file, not a filled blank.
        natural = [f for f in filled if f in unlabelled_only]
        assert len(natural) == (1 if k == 2 else 0)
        # Before: 42, 40, 42, 40, 42 of the 42 gold-filled contexts of split k were in the corpus built with split=all.
        assert sum(f in corpus for f in filled if f not in natural) == 0, k
        # The text before the blank is still there (its last 10 characters).
        lefts = [r.fields["left"].strip()[-10:] for r in rows]
        assert sum(left in corpus for left in lefts) == 42, [x for x in lefts if x not in corpus]


def test_no_dev_or_test_text_reaches_the_corpus_through_unlabeled_json(shared_fewclue, tmp_path):
    eprstmt = load_task_specs(["eprstmt"], None)[0]
    source = CorpusSource(fewclue_dir=str(shared_fewclue), fewclue_tasks=["eprstmt"], fewclue_train=False)
    sentences, counts = read_corpus(source, tmp_path)
    evaluated = {row.fields["sentence"] for path in sorted((shared_fewclue / "eprstmt").glob("*.json"))
                 if path.name.startswith(("dev", "test")) for row in read_rows(eprstmt, path, labelled=False)}
    unlabeled = read_rows(eprstmt, shared_fewclue / "eprstmt" / "unlabeled.json", labelled=False)
    repeated = [row for row in unlabeled if row.fields["sentence"] in evaluated]
    assert len(repeated) >= 53  # 47 test.json + 6 dev_few_all texts, and dev_k rows of other splits
    assert counts["fewclue/eprstmt/unlabeled.json"] > 0
    assert not evaluated & set(sentences)  # before: the 62 rows repeating one were in the corpus
