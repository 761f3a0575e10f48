"""stage=efl: the pairs of real rows, the loss and the decision by hand, the head from an entailment export, and a run
through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from datamodules.errors import ConfigError
from datamodules.runs.predictor import Predictor
from datamodules.tasks.rows import read_rows
from datamodules.tasks.task_configs import load_task_specs
from lightning_modules.encoders.char_vocab import char_tokenizer
from lightning_modules.stages.efl import EXPORTED_HEAD, class_log_probs_of_scores, row_pairs
from lightning_modules.stages.entailment import row_decisions
from tests import test_config_contract, test_stage_contract
from tests.conftest import compose_config
from tests.helpers import read_jsonl, run_cli, stage_module
from tests.test_kgbert import tiny_masked_lm
from train import instantiate_with, train

CHID = "这里应填“{candidate}”。"
WSC = "“{span2}”指的是“{span1}”。"


def task_rows(shared_fewclue, name: str, count: int = 4):
    spec = load_task_specs([name])[0]
    return spec, read_rows(spec, shared_fewclue / name / "train_0.json", labelled=True)[:count]


def tiny_efl(tmp_path, task: str, rows, *overrides: str):
    """stage=efl on a 32-wide tiny BERT (no dropout, 128 positions) over the rows' characters, in eval mode."""
    spec = load_task_specs([task])[0]
    texts = [str(v) for row in rows for v in row.fields.values()] + list(spec.descriptions.values()) + [CHID, WSC]
    tokenizer = char_tokenizer(texts, tmp_path / "cache")
    module = stage_module("efl", tiny_masked_lm(tokenizer, hidden=32), tokenizer, tmp_path / "run", f"task={task}",
                          "stage.dropout=0.0", "stage.max_length=128", *overrides)
    return module.eval()


# -- pairs -------------------------------------------------------------------------------------------------------
def test_a_bustm_row_is_paired_with_each_label_description_in_label_order(shared_fewclue, tmp_path):
    spec, rows = task_rows(shared_fewclue, "bustm")
    raw = read_jsonl(shared_fewclue / "bustm" / "train_0.json")[0]
    assert (raw["sentence1"], raw["sentence2"]) == ("叫爸爸叫一声我听听", "那你叫我一声爸爸")
    pairs, entailed_class = row_pairs(spec, rows[0], CHID, WSC)
    assert entailed_class is None
    assert [(p.text, p.description) for p in pairs] == [
        ("叫爸爸叫一声我听听；那你叫我一声爸爸", "这两句话的意思不同。"),  # label "0"
        ("叫爸爸叫一声我听听；那你叫我一声爸爸", "这两句话的意思相同。"),  # label "1"
    ]
    # Batched: [CLS] text [SEP] description [SEP], the description as the second segment, row after row.
    module = tiny_efl(tmp_path, "bustm", rows)
    batch = module.collate(rows[:2])
    assert batch["labels"].tolist() == [1, 0] and batch["entailed_class"] is None and batch["ids"] == [0, 1]
    inputs = batch["inputs"]
    assert inputs["input_ids"].shape[0] == 4 and module.batch_size(batch) == 2
    second = inputs["input_ids"][1][inputs["token_type_ids"][1].bool() & inputs["attention_mask"][1].bool()]
    assert module.tokenizer.convert_ids_to_tokens(second.tolist()) == [*"这两句话的意思相同。", "[SEP]"]


def test_an_ocnli_row_is_paired_with_each_of_its_three_relations(shared_fewclue):
    spec, rows = task_rows(shared_fewclue, "ocnli")
    raw = read_jsonl(shared_fewclue / "ocnli" / "train_0.json")[0]
    pairs, entailed_class = row_pairs(spec, rows[0], CHID, WSC)
    text = f"{raw['sentence1']}；{raw['sentence2']}"
    assert text.startswith("七五期间开始,国家又投资") and text.endswith("；八五期间会把剩下的土堤都改建完")
    assert entailed_class is None and rows[0].label == 1  # neutral
    assert [(p.text, p.description) for p in pairs] == [
        (text, "前一句可以推出后一句。"), (text, "前一句与后一句无法互相推出。"), (text, "前一句与后一句相互矛盾。")]


def test_a_cluewsc_row_is_one_statement_that_stands_for_true_and_chid_pairs_every_candidate(shared_fewclue):
    spec, rows = task_rows(shared_fewclue, "cluewsc")
    for row in rows:
        [pair], entailed_class = row_pairs(spec, row, CHID, WSC)
        statement = f"“{row.fields['span2']}”指的是“{row.fields['span1']}”。"
        assert (pair.text, pair.description) == (row.fields["text"], statement)
        assert spec.label_list[entailed_class] == "true"
    spec, rows = task_rows(shared_fewclue, "chid")
    pairs, entailed_class = row_pairs(spec, rows[0], CHID, WSC)
    assert entailed_class is None
    assert [p.description for p in pairs] == [f"这里应填“{c}”。" for c in rows[0].fields["candidates"]]
    assert len(pairs) == 7 and all(p.text.count("＿＿＿＿") == 1 for p in pairs)


# -- scores, loss and decision -----------------------------------------------------------------------------------
def test_classes_are_decided_by_the_highest_entailment_score_as_row_decisions_does():
    scores = torch.tensor([[0.3, 1.5, -0.2], [2.0, 0.1, 0.0]])
    log_probs = class_log_probs_of_scores(scores, None)
    assert log_probs.argmax(-1).tolist() == [1, 0]
    for row in range(2):
        total = sum(math.exp(s) for s in scores[row].tolist())
        assert log_probs[row].exp().tolist() == pytest.approx([math.exp(s) / total for s in scores[row].tolist()])
    # The same rows as stage=entailment's validation sees them: entailment probabilities, the true class entailed.
    truth = torch.tensor([1, 2])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    decided = row_decisions(torch.sigmoid(scores).flatten(), F.one_hot(truth, 3).flatten(), groups)
    assert decided.tolist() == (log_probs.argmax(-1) == truth).long().tolist() == [1, 0]
    # One pair per row: p(entailed) = sigmoid(score) for the class the statement stands for.
    one = torch.tensor([[0.8], [-1.1]])
    sigmoid = [1 / (1 + math.exp(-0.8)), 1 / (1 + math.exp(1.1))]
    assert class_log_probs_of_scores(one, 1).exp().flatten().tolist() == pytest.approx(
        [1 - sigmoid[0], sigmoid[0], 1 - sigmoid[1], sigmoid[1]])
    assert class_log_probs_of_scores(one, 0).exp().flatten().tolist() == pytest.approx(
        [sigmoid[0], 1 - sigmoid[0], sigmoid[1], 1 - sigmoid[1]])
    assert class_log_probs_of_scores(one, 1).argmax(-1).tolist() == [1, 0]


def pair_score(module, text: str, description: str) -> float:
    """One pair alone (no padding): log-odds of entailment from the head on [CLS]."""
    encoded = module.tokenizer(text, description, truncation="only_first", max_length=module.max_length,
                               return_tensors="pt")
    logits = module.head(module.backbone(**encoded).last_hidden_state[:, 0])[0]
    return float(logits[1] - logits[0])


def test_the_loss_of_a_two_row_batch_by_hand(shared_fewclue, tmp_path):
    spec, rows = task_rows(shared_fewclue, "bustm")
    module = tiny_efl(tmp_path, "bustm", rows)
    batch = module.collate(rows[:2])  # labels 1 ("1": 相同) and 0
    with torch.no_grad():
        out = module.step(batch)
        expected = 0.0
        for row in rows[:2]:
            text = f"{row.fields['sentence1']}；{row.fields['sentence2']}"
            scores = [pair_score(module, text, spec.descriptions[name]) for name in spec.label_list]
            expected += -(scores[row.label] - math.log(sum(math.exp(s) for s in scores))) / 2
    assert out.losses["cls"].item() == pytest.approx(expected, abs=1e-5)
    assert out.log_probs.exp().sum(-1).tolist() == pytest.approx([1.0, 1.0])


def test_a_one_pair_row_trains_on_binary_cross_entropy(shared_fewclue, tmp_path):
    spec, rows = task_rows(shared_fewclue, "cluewsc")
    module = tiny_efl(tmp_path, "cluewsc", rows)
    batch = module.collate(rows[:2])
    assert batch["inputs"]["input_ids"].shape[0] == 2 and batch["entailed_class"] == 1
    with torch.no_grad():
        out = module.step(batch)
        scores = torch.tensor([pair_score(module, row.fields["text"], WSC.format(**row.fields)) for row in rows[:2]])
    targets = torch.tensor([float(spec.label_list[row.label] == "true") for row in rows[:2]])
    expected = F.binary_cross_entropy_with_logits(scores, targets)
    assert out.losses["cls"].item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("task", ["eprstmt", "ocnli", "csl", "cluewsc", "chid"])
def test_every_task_kind_trains_tests_and_predicts(task, make_config, fewclue_with_test_public, shared_fewclue):
    results = train(make_config(["stage=efl", f"task={task}", "trainer.max_steps=1", "data.batch_size=4",
                                 "data.heldout_max=8", "trainer.limit_predict_batches=1", "logger=none"],
                                fewclue_with_test_public))
    assert all(0.0 <= results[key] <= 1.0 for key in ("val/acc", "test/acc"))
    rows = read_jsonl(results["predictions"])
    key = "answer" if task == "chid" else "label"
    assert rows and all(set(r) == {"id", key} for r in rows)


# -- the contract ------------------------------------------------------------------------------------------------
def test_the_stage_keeps_the_stage_contract(make_config, tmp_path, shared_fewclue):
    test_config_contract.test_every_stage_derives_from_the_one_base_and_takes_only_what_it_uses("efl", make_config)
    test_stage_contract.test_every_stage_saves_exactly_its_settings_as_plain_values("efl", tmp_path, shared_fewclue)


def test_a_task_without_descriptions_stops_naming_them(shared_fewclue, tmp_path):
    spec, rows = task_rows(shared_fewclue, "bustm")
    with pytest.raises(ConfigError, match=r"conf/task/bustm.yaml descriptions has no entry for label\(s\) \['1'\]"):
        tiny_efl(tmp_path, "bustm", rows, "~task.descriptions.1")


# -- starting from an entailment export --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def entailment_export(tmp_path_factory, shared_fewclue):
    """A tiny stage=entailment run on bustm's and ocnli's pairs (two steps), and its export."""
    root = tmp_path_factory.mktemp("efl_entailment")
    results = train(compose_config(
        ["stage=entailment", "data.tasks=[bustm,ocnli]", "data.unlabeled=false", "data.val_rows_per_task=4",
         "data.batch_size=4", "trainer.max_steps=2", "model.hidden_size=32", "model.intermediate_size=64",
         "logger=none"], root / "entailment", shared_fewclue))
    return results["export_dir"]


def efl_on_export(export: str, run_dir, shared_fewclue, *overrides: str):
    cfg = compose_config(["stage=efl", "task=bustm", "model=hf", f"model.pretrained={export}", *overrides], run_dir,
                         shared_fewclue)
    backbone = instantiate_with(cfg.model)
    tokenizer = backbone.tokenizer()
    return instantiate_with(cfg.stage, masked_lm=backbone.masked_lm(tokenizer), tokenizer=tokenizer)


def test_the_head_of_an_entailment_export_is_loaded(entailment_export, tmp_path, shared_fewclue, caplog):
    saved = torch.load(f"{entailment_export}/{EXPORTED_HEAD}", weights_only=True)
    with caplog.at_level("INFO", logger="lightning_modules.stages.efl"):
        beside = efl_on_export(entailment_export, tmp_path / "beside", shared_fewclue)
    assert beside.results["efl/head"] == "model.pretrained/entailment_head/head.pt"
    assert "starting from the entailment head beside model.pretrained" in caplog.text
    named = efl_on_export(entailment_export, tmp_path / "named", shared_fewclue,
                          f"stage.head={entailment_export}/{EXPORTED_HEAD}")
    assert named.results["efl/head"] == "stage.head"
    for module in (beside, named):
        assert set(module.head.state_dict()) == set(saved) == {"1.weight", "1.bias"}
        assert all(torch.equal(module.head.state_dict()[k], saved[k]) for k in saved)
    fresh = tiny_efl(tmp_path, "bustm", task_rows(shared_fewclue, "bustm")[1])
    assert fresh.results["efl/head"] == "fresh"


def test_a_missing_or_wrong_shaped_head_stops_in_one_line_naming_the_key_and_the_file(entailment_export, tmp_path,
                                                                                     shared_fewclue):
    missing = tmp_path / "none.pt"
    with pytest.raises(ConfigError) as err:
        efl_on_export(entailment_export, tmp_path / "a", shared_fewclue, f"stage.head={missing}")
    assert str(err.value).startswith(f"stage.head: {missing} is not a file;") and "\n" not in str(err.value)
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(16, 2)).state_dict(), wrong)
    with pytest.raises(ConfigError) as err:
        efl_on_export(entailment_export, tmp_path / "b", shared_fewclue, f"stage.head={wrong}")
    message = str(err.value)
    assert message.startswith(f"stage.head: {wrong} holds {{'1.weight': (2, 16), '1.bias': (2,)}}; the head on this "
                              "backbone is {'1.weight': (2, 32), '1.bias': (2,)}") and "\n" not in message


def test_zero_shot_from_an_export_scores_the_rows_and_a_new_head_is_refused(entailment_export, tmp_path,
                                                                            shared_fewclue):
    results = train(compose_config(
        ["stage=efl", "task=bustm", "model=hf", f"model.pretrained={entailment_export}", "trainer.max_epochs=0",
         "data.heldout_max=16", "trainer.limit_predict_batches=1", "logger=none"], tmp_path / "zero", shared_fewclue))
    assert results["zero_shot"] and results["efl/head"] == "model.pretrained/entailment_head/head.pt"
    assert 0.0 <= results["val/acc"] <= 1.0 and 0.0 <= results["heldout/acc"] <= 1.0
    with pytest.raises(ConfigError, match="trainer.max_epochs=0 with stage=efl and a new head"):
        train(compose_config(["stage=efl", "task=bustm", "trainer.max_epochs=0", "logger=none"], tmp_path / "fresh",
                             shared_fewclue))


# -- the CLI -----------------------------------------------------------------------------------------------------
def test_efl_through_the_cli_on_bustm(tmp_path, shared_fewclue):
    run_dir = tmp_path / "run"
    done = run_cli(["stage=efl", "model=tiny", "task=bustm", "trainer.max_epochs=1", "logger=none",
                    "trainer.limit_predict_batches=1", f"data.data_dir={shared_fewclue}", f"hydra.run.dir={run_dir}"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["stage"], results["task"], results["efl/head"]) == ("efl", "bustm", "fresh")
    assert results["global_step"] == 2  # 32 rows, batch 16
    assert 0.0 <= results["val/acc"] <= 1.0 and 0.0 <= results["heldout/acc"] <= 1.0
    assert results["data/heldout_rows"] > 0
    assert math.isfinite(results["train/loss"])
    rows = read_jsonl(run_dir / results["predictions"])
    test_ids = [r["id"] for r in read_jsonl(shared_fewclue / "bustm" / "test.json")]
    assert results["predictions"] == "predictions/bustm_predict.json"
    ids = [r["id"] for r in rows]  # one evaluation batch (the longest rows), written in test.json's order
    assert len(ids) == 64 and set(ids) <= set(test_ids) and ids == sorted(ids, key=test_ids.index)
    assert {r["label"] for r in rows} <= {"0", "1"}
    # predict.py's probabilities: the softmax over the row's two pair scores.
    predictor = Predictor.load(run_dir, device="cpu")
    spec, train_rows = task_rows(shared_fewclue, "bustm", 2)
    [record, _] = predictor.predict(train_rows, progress=None)
    module = predictor.module
    text = f"{train_rows[0].fields['sentence1']}；{train_rows[0].fields['sentence2']}"
    with torch.no_grad():
        scores = [pair_score(module, text, spec.descriptions[name]) for name in spec.label_list]
    total = sum(math.exp(s) for s in scores)
    assert list(record["probs"].values()) == pytest.approx([math.exp(s) / total for s in scores], abs=1e-4)
    assert record["label"] == spec.label_list[max(range(2), key=scores.__getitem__)]
