"""stage=entailment: pairs per task kind, the task-mixing rule, over-fitting, train.py runs and the chain."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

from datamodules.pretraining.entailment import (
    BLANK,
    EntailmentPair,
    group_batches,
    pairs_for_row,
    task_weights,
)
from datamodules.tasks.rows import read_rows
from datamodules.mlm_texts import MlmText
from datamodules.tasks.task_configs import load_task_specs
from lightning_modules.encoders.char_vocab import char_tokenizer
from lightning_modules.stages.entailment import row_decisions
from tests.conftest import compose_config
from tests.helpers import stage_module
from train import instantiate_with, train

CHID = "“{candidate}”"
WSC = "“{span2}”指的是“{span1}”。"


def spec_and_rows(shared_fewclue: Path, name: str, count: int = 4):
    spec = load_task_specs([name])[0]
    return spec, read_rows(spec, shared_fewclue / name / "train_0.json", labelled=True)[:count]


def test_classification_rows_pair_the_true_description_with_sampled_others(shared_fewclue):
    spec, rows = spec_and_rows(shared_fewclue, "tnews")
    for row in rows:
        pairs = pairs_for_row(spec, row, random.Random(0), 3, None, CHID, WSC)
        assert [p.label for p in pairs] == [1, 0, 0, 0]
        assert pairs[0].description == spec.descriptions[spec.label_list[row.label]]
        assert len({p.description for p in pairs}) == 4 and all(p.text == row.fields["sentence"] for p in pairs)
    spec, rows = spec_and_rows(shared_fewclue, "eprstmt")
    pairs = pairs_for_row(spec, rows[0], random.Random(0), 3, None, CHID, WSC)
    assert len(pairs) == 2 and {p.description for p in pairs} == set(spec.descriptions.values())  # binary: 1 other


def test_ocnli_is_native_nli(shared_fewclue):
    spec, rows = spec_and_rows(shared_fewclue, "ocnli", 32)
    for row in rows:
        [pair] = pairs_for_row(spec, row, random.Random(0), 3, "entailment", CHID, WSC)
        assert (pair.text, pair.description) == (row.fields["sentence1"], row.fields["sentence2"])
        assert pair.label == int(spec.label_list[row.label] == "entailment")


def test_chid_describes_each_candidate_for_the_blank(shared_fewclue):
    spec, rows = spec_and_rows(shared_fewclue, "chid")
    row = rows[0]
    pairs = pairs_for_row(spec, row, random.Random(0), 3, None, "这里应填“{candidate}”。", WSC)
    assert len(pairs) == 4 and [p.label for p in pairs] == [1, 0, 0, 0]
    assert pairs[0].description == f"这里应填“{row.fields['candidates'][row.label]}”。"
    assert all(p.text.count(BLANK) == 1 and "#idiom#" not in p.text for p in pairs)
    assert len({p.description for p in pairs}) == 4


def test_cluewsc_describes_the_coreference(shared_fewclue):
    spec, rows = spec_and_rows(shared_fewclue, "cluewsc", 32)
    for row in rows:
        [pair] = pairs_for_row(spec, row, random.Random(0), 3, None, CHID, WSC)
        assert pair.description == f"“{row.fields['span2']}”指的是“{row.fields['span1']}”。"
        assert pair.label == int(spec.label_list[row.label] == "true")


def test_rows_are_decided_by_the_most_entailed_description():
    # Row 0: 4 pairs, the true one (index 1) scores highest -> right. Row 1: 2 pairs, a wrong one wins -> wrong.
    # Row 2: one pair, entailed, p = 0.7 -> right. Row 3: one pair, not entailed, p = 0.6 -> wrong.
    entailed = torch.tensor([0.2, 0.9, 0.4, 0.1, 0.8, 0.3, 0.7, 0.6])
    labels = torch.tensor([0, 1, 0, 0, 0, 1, 1, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    assert row_decisions(entailed, labels, groups).tolist() == [1, 0, 1, 0]


def test_validation_batches_never_split_a_row():
    sizes = [4, 4, 1, 4, 2, 1, 4]
    pairs = [EntailmentPair("t", "x", "d", int(j == 0), group) for group, n in enumerate(sizes) for j in range(n)]
    batches = group_batches(pairs, 8)
    # rows 0+1 fill 8; rows 2-5 (1 + 4 + 2 + 1) fill 8; row 6 would make 12, so it starts a batch.
    assert batches == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]
    for batch in batches:
        groups = {pairs[i].group for i in batch}
        assert all(sum(p.group == g for p in pairs) == sum(pairs[i].group == g for i in batch) for g in groups)


def test_task_mixing_is_temperature_sampling_by_hand():
    weights = task_weights({"big": 100, "small": 4}, alpha=0.5)  # sqrt: 10 and 2
    assert weights == pytest.approx({"big": 10 / 12, "small": 2 / 12})
    assert task_weights({"big": 100, "small": 4}, alpha=1.0) == pytest.approx({"big": 100 / 104, "small": 4 / 104})
    assert task_weights({"big": 100, "small": 4}, alpha=0.0) == pytest.approx({"big": 0.5, "small": 0.5})


def test_datamodule_builds_every_task_and_samples_by_the_rule(shared_fewclue, tmp_path):
    dm = instantiate_with(compose_config(["stage=entailment", "data.val_rows_per_task=8"], tmp_path / "run",
                                         shared_fewclue).data)
    dm.setup()
    # split 0 rows x (1 + negatives, capped by the other labels); ocnli and cluewsc one pair per row.
    assert dm.counts == {"bustm": 64, "chid": 168, "cluewsc": 32, "csl": 64, "csldcp": 2144, "eprstmt": 64,
                         "iflytek": 3712, "ocnli": 32, "tnews": 960}
    assert sum(dm.mixing.values()) == pytest.approx(1.0)
    total = sum(n ** 0.5 for n in dm.counts.values())
    assert dm.mixing["iflytek"] == pytest.approx(3712 ** 0.5 / total)
    # Unlabeled texts come from the tasks that have an unlabeled.json (eprstmt, bustm, tnews, chid), never a text of a
    # dev or test row (eprstmt's unlabeled.json repeats test.json texts word for word).
    assert len(dm.mlm_texts) > 50_000
    task = next(spec for spec in dm.specs if spec.name == "eprstmt")
    evaluated = {row.fields["sentence"] for name in ("test.json", "dev_0.json")
                 for row in read_rows(task, shared_fewclue / "eprstmt" / name, labelled=False)}
    assert not evaluated & {t.text for t in dm.mlm_texts}
    dm.connect(lambda rows: rows, lambda texts: texts)
    loaders = dm.train_dataloader()
    assert set(loaders) == {"main", "mlm"} and len(loaders["main"]) == len(loaders["mlm"])
    drawn = Counter(p.task for batch in loaders["main"] for p in batch)
    n = sum(drawn.values())
    assert abs(drawn["iflytek"] / n - dm.mixing["iflytek"]) < 0.03
    assert abs(drawn["cluewsc"] / n - dm.mixing["cluewsc"]) < 0.02
    assert len(dm.val_pairs) == 8 * (2 + 4 + 1 + 2 + 4 + 2 + 4 + 1 + 4)


def test_entailment_and_mlm_losses_fall_when_overfitting(tmp_path):
    good, bad = "这是一条好评。", "这是一条差评。"
    pairs = [EntailmentPair("t", "这个手机很好用", good, 1), EntailmentPair("t", "质量太差了", good, 0),
             EntailmentPair("t", "物流很快很满意", bad, 0), EntailmentPair("t", "完全不能用", bad, 1)]
    texts = [MlmText("我很喜欢这本书", mask_seed=1), MlmText("快递送得很快", mask_seed=2)]
    tokenizer = char_tokenizer([*(p.text + p.description for p in pairs), *(t.text for t in texts)], tmp_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    module = stage_module("entailment", BertForMaskedLM(config), tokenizer, tmp_path / "run", "stage.dropout=0.0",
                          "stage.mask_prob=0.3")
    batch = {"main": module.collate(pairs), "mlm": module.collate_mlm(texts)}
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    history = []
    for _ in range(20):
        out = module.training_output(batch)
        loss = module.total_loss(out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in out.losses.items()})
    for name in ("entail", "mlm"):
        assert all(math.isfinite(h[name]) for h in history)
        assert history[-1][name] < 0.5 * history[0][name], (name, history[0][name], history[-1][name])
    assert module.training_output(batch).predictions.tolist() == [1, 0, 0, 1]


def entailment_overrides() -> list[str]:
    return ["stage=entailment", "data.tasks=[eprstmt,ocnli,chid,cluewsc]", "data.val_rows_per_task=4",
            "data.max_unlabeled_per_task=50", "data.batch_size=4", "data.mlm_batch_size=4", "trainer.max_steps=3"]


def test_entailment_through_train_exports_a_masked_lm(make_config):
    cfg = make_config([*entailment_overrides(), "model.hidden_size=32", "model.intermediate_size=64"])
    results = train(cfg)
    assert math.isfinite(results["train/loss_entail"]) and math.isfinite(results["train/loss_mlm"])
    assert results["entailment/pairs_per_task"] == {"eprstmt": 64, "ocnli": 32, "chid": 168, "cluewsc": 32}
    assert 0.0 <= results["val/acc"] <= 1.0
    assert type(AutoModelForMaskedLM.from_pretrained(results["export_dir"])).__name__ == "BertForMaskedLM"
    assert (Path(results["export_dir"]) / "entailment_head" / "head.pt").is_file()


def test_chain_kgbert_then_entailment_then_fuzzy_pet_reports_test_acc(tmp_path, fewclue_with_test_public):
    """The documented chain with the tiny model: kgbert -> entailment -> fuzzy_pet (falls back to finetune)."""
    from tests.test_kgbert import SENTENCES, TRIPLES

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{s}第{i}次。" for i in range(8) for s in SENTENCES) + "\n", encoding="utf-8")
    kg = tmp_path / "kg.spo"
    kg.write_text("\n".join("\t".join(t) for t in TRIPLES) + "\n", encoding="utf-8")
    kgbert = train(compose_config(
        ["stage=kgbert", f"data.corpus.files=[{corpus}]", f"data.kg.files=[{kg}]", "data.val_size=8",
         "data.split=0",  # the data copy has split 0 only; its texts give the tiny vocabulary the label words
         "data.alignment.min_stop_sentences=1000", "trainer.max_steps=3"],
        tmp_path / "kgbert", fewclue_with_test_public))
    entailment = train(compose_config(
        [*entailment_overrides(), "model=hf", f"model.pretrained={kgbert['export_dir']}"],
        tmp_path / "entailment", fewclue_with_test_public))
    last_stage = "fuzzy_pet" if (Path(__file__).parents[1] / "conf/stage/fuzzy_pet.yaml").is_file() else "finetune"
    final = train(compose_config(
        [f"stage={last_stage}", "task=ocnli", "model=hf", f"model.pretrained={entailment['export_dir']}",
         "trainer.max_steps=3", "trainer.limit_predict_batches=1"], tmp_path / "final", fewclue_with_test_public))
    assert final["pretrained"] == entailment["export_dir"]
    assert final["test/acc"] is not None and 0.0 <= final["test/acc"] <= 1.0
