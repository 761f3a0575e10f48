"""Corpus readers, KG loading, alignment (distant supervision) and negative SPOs, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.pretraining.alignment import AlignmentRules, EntityMatcher, align, longest_non_overlapping
from datamodules.pretraining.corpus import CorpusSource, corpus_files, read_corpus, read_text_file, rejoin_spaced, split_long
from datamodules.pretraining.kg import KgSource, KnowledgeGraph, load_kg, read_spo
from datamodules.errors import DataError
from tests.conftest import compose_config
from train import instantiate_with

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

TRIPLES = [
    ("高血压", "类别", "疾病"),
    ("头痛", "类别", "症状"),
    ("头痛", "义原", "疼痛"),
    ("阿司匹林", "治疗", "头痛"),
    ("血压", "义原", "量"),
    ("...", "义原", "标点"),
    ("12", "义原", "数"),
    ("a", "义原", "字母"),
]
SENTENCE = "他患有高血压，经常头痛。"


@pytest.fixture
def kg() -> KnowledgeGraph:
    return KnowledgeGraph(TRIPLES)


def test_hand_made_sentence_aligns_longest_mentions_and_subject_triples(kg):
    aligned, stats = align([SENTENCE], kg, AlignmentRules(min_stop_sentences=10))
    sentence = aligned[0]
    # 他0 患1 有2 高3 血4 压5 ，6 经7 常8 头9 痛10 。11 — 血压 is nested in 高血压 and loses.
    assert sentence.mentions == [(3, 6, "高血压"), (9, 11, "头痛")]
    assert sentence.triples == [("高血压", "类别", "疾病"), ("头痛", "类别", "症状"), ("头痛", "义原", "疼痛")]
    assert stats["kg/aligned_pairs"] == 3
    assert stats["kg/coverage"] == 1.0
    assert stats["kg/triples_per_sentence"] == 3.0
    # 14 names; "..." and "12" (no CJK character or letter), "a", "量", "数" (one character) are not indexed.
    assert len(kg.names()) == 14 and stats["kg/names_indexed"] == 9


def test_triples_with_both_ends_mentioned_come_first_and_specific_objects_pair(kg):
    text = "阿司匹林能缓解头痛"
    rules = AlignmentRules(min_stop_sentences=10, max_object_degree=1)
    aligned, _ = align([text], kg, rules)
    assert aligned[0].mentions == [(0, 4, "阿司匹林"), (7, 9, "头痛")]
    assert aligned[0].triples == [("阿司匹林", "治疗", "头痛"), ("头痛", "类别", "症状"), ("头痛", "义原", "疼痛")]
    # An object mentioned alone pairs only when it is specific (degree <= max_object_degree).
    alone, _ = align(["我有点疼痛"], kg, AlignmentRules(min_stop_sentences=10, max_object_degree=0))
    assert alone[0].mentions == [(3, 5, "疼痛")] and alone[0].triples == []
    alone, _ = align(["我有点疼痛"], kg, AlignmentRules(min_stop_sentences=10, max_object_degree=1))
    assert alone[0].triples == [("头痛", "义原", "疼痛")]


def test_caps_on_triples_per_mention_and_per_sentence(kg):
    rules = AlignmentRules(min_stop_sentences=10, max_triples_per_mention=1, max_triples_per_sentence=2)
    aligned, stats = align([SENTENCE, "头痛", "没有实体"], kg, rules)
    assert aligned[0].triples == [("高血压", "类别", "疾病"), ("头痛", "类别", "症状")]
    assert aligned[1].triples == [("头痛", "类别", "症状")]
    assert aligned[2].triples == [] and aligned[2].mentions == []
    assert stats["kg/aligned_pairs"] == 3
    assert stats["kg/coverage"] == round(2 / 3, 4)
    assert stats["kg/triples_per_sentence"] == 1.5


def test_stop_entities_over_the_frequency_cap_are_dropped(kg):
    # 头痛 in 60 of 100 sentences, 高血压 in 10: cap = max(0.5 * 100, 50) = 50 sentences.
    sentences = [f"病人{i:02d}头痛" for i in range(60)] + [f"病人{i:02d}高血压" for i in range(10)]
    sentences += [f"第{i}句没有实体" for i in range(30)]
    aligned, stats = align(sentences, kg, AlignmentRules(max_sentence_ratio=0.5, min_stop_sentences=50))
    assert stats["kg/stop_entities"] == 1
    assert all(not a.mentions for a in aligned[:60])
    assert all(a.mentions == [(4, 7, "高血压")] for a in aligned[60:70])
    assert stats["kg/aligned_pairs"] == 10 and stats["kg/coverage"] == 0.1


def test_longest_non_overlapping_prefers_length_then_leftmost():
    matches = [(0, 2, "ab"), (1, 4, "bcd"), (3, 5, "de"), (5, 6, "f")]
    assert longest_non_overlapping(matches) == [(1, 4, "bcd"), (5, 6, "f")]
    assert longest_non_overlapping([(0, 2, "ab"), (1, 3, "bc")]) == [(0, 2, "ab")]


def test_matcher_finds_overlapping_occurrences_with_one_automaton():
    matcher = EntityMatcher(["北京", "北京大学", "大学"], AlignmentRules())
    assert sorted(matcher.find("北京大学")) == [(0, 2, "北京"), (0, 4, "北京大学"), (2, 4, "大学")]


# -- readers ---------------------------------------------------------------------------------------
def test_spaced_characters_are_rejoined():
    assert rejoin_spaced("中 年 男 性 ， 4 8 岁") == "中年男性，48岁"
    assert rejoin_spaced("I am fine") == "I am fine"
    assert rejoin_spaced("正常句子") == "正常句子"


def test_split_long_cuts_at_sentence_punctuation():
    assert split_long("一二三。四五六。七八", 7) == ["一二三。", "四五六。七八"]
    assert split_long("一二三四五六七八九十", 4) == ["一二三四", "五六七八", "九十"]
    assert all(len(p) <= 20 for p in split_long("好" * 100 + "。" + "坏" * 5, 20))


def test_readers_take_text_lines_json_field_and_tsv_column(tmp_path):
    (tmp_path / "a.txt").write_text("第一行\n\n第二行\n", encoding="utf-8")
    row = json.dumps({"id": 1, "text": "杰森"}, ensure_ascii=False)
    (tmp_path / "b.jsonl").write_text(row + "\n", encoding="utf-8")
    (tmp_path / "c.tsv").write_text("label\ttext_a\n1\t评论一\n0\t评论二\n", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("label\ttext_a\n1\t开发集\n", encoding="utf-8")
    assert list(read_text_file(tmp_path / "a.txt")) == ["第一行", "第二行"]
    assert list(read_text_file(tmp_path / "b.jsonl")) == ["杰森"]
    assert list(read_text_file(tmp_path / "c.tsv")) == ["评论一", "评论二"]
    source = CorpusSource(files=[str(tmp_path)], fewclue_tasks=[])
    assert [p.name for p in corpus_files(source)] == ["a.txt", "b.jsonl", "c.tsv"]  # dev.tsv left out
    sentences, counts = read_corpus(source, tmp_path / "cache")
    assert sentences == ["第一行", "第二行", "杰森", "评论一", "评论二"]
    with pytest.raises(DataError, match=r"b.jsonl:1: no field 'sentence'"):
        list(read_text_file(tmp_path / "b.jsonl", text_field="sentence"))
    with pytest.raises(DataError, match=r"c.tsv:1 \(TSV header\): no field 'content'"):
        list(read_text_file(tmp_path / "c.tsv", text_field="content"))


def test_bad_kg_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.spo"
    path.write_text("头痛\t类别\t症状\n高血压\t类别\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.spo:2: expected 3 tab-separated fields"):
        read_spo(path)


def test_duie_sentences_come_aligned(tmp_path):
    row = {"text": "《骆驼祥子》的作者是老舍", "spo_list": [
        {"predicate": "作者", "subject": "骆驼祥子", "object": {"@value": "老舍"}, "subject_type": "图书作品"}]}
    (tmp_path / "duie.json").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    kg, given = load_kg(KgSource(files=[str(tmp_path / "duie.json")]))
    assert kg.triples == [("骆驼祥子", "作者", "老舍")]
    aligned, stats = align([], kg, AlignmentRules(), given)
    assert aligned[0].mentions == [(1, 5, "骆驼祥子"), (10, 12, "老舍")]
    assert aligned[0].triples == [("骆驼祥子", "作者", "老舍")] and stats["kg/aligned_pairs"] == 1


def test_datamodule_caches_the_alignment(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([SENTENCE] * 3 + [f"第{i}句话没有实体" for i in range(7)]) + "\n", encoding="utf-8")
    spo = tmp_path / "kg.spo"
    spo.write_text("\n".join("\t".join(t) for t in TRIPLES) + "\n", encoding="utf-8")

    def make():
        cfg = compose_config(["stage=kgbert", f"data.corpus.files=[{corpus}]", "data.corpus.fewclue_tasks=[]",
                              f"data.kg.files=[{spo}]", "data.alignment.min_stop_sentences=100", "data.val_size=2"],
                             tmp_path / "run")
        return instantiate_with(cfg.data)

    first = make()
    first.prepare_data()
    first.setup()
    # 10 lines, 8 distinct sentences (the repeated one kept once); 1 of 8 aligned with 3 triples.
    assert first.stats["kg/sentences"] == 8 and first.stats["kg/aligned_pairs"] == 3
    assert len(first.train_sentences) + len(first.val_sentences) == 8 and len(first.val_sentences) == 1
    monkeypatch.setattr("datamodules.pretraining.aligned_corpus.align", lambda *a, **k: pytest.fail("cache not used"))
    second = make()
    second.setup()
    assert second.stats == first.stats
    assert [a.text for a in second.train_sentences] == [a.text for a in first.train_sentences]


@pytest.mark.skipif(not (SHARED / "kg" / "Medical.spo").is_file(), reason="../shared/kg not found")
def test_medical_kg_mentions_agree_with_the_gold_ner_spans():
    """Medical.spo against medical_ner/dev.tsv: the KG mentions are mostly real annotated entities."""
    kg, _ = load_kg(KgSource(files=[str(SHARED / "kg" / "Medical.spo")]))
    path = SHARED / "corpus" / "medical_ner" / "dev.tsv"
    lines = path.read_text(encoding="utf-8").split("\n")[1:]
    texts, gold = [], []
    for line in lines:
        if not line.strip():
            continue
        chars, tags = (part.split(" ") for part in line.split("\t"))
        texts.append("".join(chars))
        spans, start = set(), None
        for i, tag in enumerate([*tags, "O"]):
            if start is not None and not tag.startswith("I-"):
                spans.add((start, i))
                start = None
            if tag.startswith("B-"):
                start = i
        gold.append(spans)
    aligned, stats = align(texts, kg, AlignmentRules())
    found = [(s, e) for a in aligned for s, e, _ in a.mentions]
    hits = sum((s, e) in g for a, g in zip(aligned, gold) for s, e, _ in a.mentions)
    assert stats["kg/sentences"] == len(texts) == 939
    assert len(found) > 300
    assert hits / len(found) > 0.5  # most KG mentions are gold entity spans
