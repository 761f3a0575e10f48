"""The results ledger (datamodules/runs/ledger.py, scripts/record_runs.py): runs recorded once per method, task and
split, read back by scripts/heldout_table.py as ``name=@method`` with the same numbers as from the folders."""

from __future__ import annotations

import json

import pytest

from datamodules.errors import ConfigError
from datamodules.runs import ledger
from scripts import record_runs
from scripts.heldout_table import method_scores, scores, table


def _run(folder, task, split, heldout, dev, **extra):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "stage": "fuzzy_pet", "task": task, "split": split, "heldout/acc": heldout, "val/acc": dev,
        "timing": {"train": 10.0, "test": 2.5}, "global_step": 48, "data/heldout_rows": 200, **extra}))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(
        f"- task={task}\n- data.split={split}\n- hydra.run.dir=/somewhere/{split}\n- precision=bf16-mixed\n")


def test_a_record_holds_the_runs_numbers_provenance_and_overrides_without_hydras(tmp_path):
    _run(tmp_path / "r", "eprstmt", "3", 0.7512345678, 0.8125, commit="abc1234", machine="Some CPU, 2 cores")
    record = ledger.run_record(tmp_path / "r", "fuzzy")
    assert record["method"] == "fuzzy" and record["task"] == "eprstmt" and record["split"] == "3"
    assert record["heldout/acc"] == 0.751235 and record["val/acc"] == 0.8125 and record["test/acc"] is None
    assert record["seconds"] == 12.5 and record["global_step"] == 48 and record["heldout_rows"] == 200
    assert (record["commit"], record["machine"]) == ("abc1234", "Some CPU, 2 cores")
    assert record["overrides"] == ["task=eprstmt", "data.split=3", "precision=bf16-mixed"]
    assert "selection" not in record  # a run from before results.json named its checkpoint rule
    _run(tmp_path / "new", "eprstmt", "3", 0.75, 0.8125, commit="abc1234", machine="Some CPU", selection="last")
    assert ledger.run_record(tmp_path / "new", "fuzzy")["selection"] == "last"


def test_a_run_without_provenance_needs_it_given(tmp_path):
    _run(tmp_path / "r", "eprstmt", "0", 0.7, 0.8)
    with pytest.raises(ConfigError, match="no commit and machine recorded"):
        ledger.run_record(tmp_path / "r", "fuzzy")
    record = ledger.run_record(tmp_path / "r", "fuzzy", commit="abc1234", machine="Some CPU")
    assert (record["commit"], record["machine"]) == ("abc1234", "Some CPU")


def test_recording_again_replaces_and_the_table_reads_the_ledger_as_the_folders(tmp_path, capsys):
    book = tmp_path / "results.jsonl"
    for split, (base, new) in enumerate([(0.50, 0.60), (0.70, 0.75), (0.60, 0.55)]):
        _run(tmp_path / "base" / str(split), "eprstmt", str(split), base, 0.9)
        _run(tmp_path / "new" / str(split), "eprstmt", str(split), new, 0.8)
    _run(tmp_path / "rerun" / "0", "eprstmt", "0", 0.65, 0.8)
    provenance = ["--commit", "abc1234", "--machine", "Some CPU", "--ledger", str(book)]
    record_runs.main(["base", str(tmp_path / "base"), *provenance])
    record_runs.main(["new", str(tmp_path / "new"), *provenance])
    record_runs.main(["new", str(tmp_path / "rerun"), *provenance])
    assert "replaces new eprstmt split 0 (heldout/acc 0.6, commit abc1234)" in capsys.readouterr().out
    lines = book.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6  # one per method, task and split
    new = scores("@new", "heldout/acc", book)
    assert new[("eprstmt", "0")].metric == 0.65 and new[("eprstmt", "1")].metric == 0.75
    assert new[("eprstmt", "0")].seconds == 12.5
    # the same table as from the folders: base 50, 70, 60; new 65, 75, 55
    from_ledger = table({"base": method_scores("@base", "heldout/acc", book),
                         "new": method_scores("@new", "heldout/acc", book)}, "base", "heldout/acc")
    _run(tmp_path / "new_folders" / "0", "eprstmt", "0", 0.65, 0.8)
    for split in ("1", "2"):
        (tmp_path / "new_folders" / split).mkdir(parents=True)
        (tmp_path / "new_folders" / split / "results.json").write_text(
            (tmp_path / "new" / split / "results.json").read_text())
    from_folders = table({"base": scores(tmp_path / "base", "heldout/acc"),
                          "new": scores(tmp_path / "new_folders", "heldout/acc")}, "base", "heldout/acc")
    assert from_ledger == from_folders
    # differences +15, +5, -5: mean 5.0, std 10.0
    assert "| eprstmt | 5.0 ± 10.0 (3) 2/1 |" in from_ledger


def test_an_unknown_method_names_the_recorded_ones(tmp_path):
    book = tmp_path / "results.jsonl"
    ledger.write([{"method": "fuzzy", "task": "csl", "split": "0", "heldout/acc": 0.5, "val/acc": 0.5}], book)
    with pytest.raises(ConfigError, match=r"no runs recorded as 'fuzy'; recorded: \['fuzzy'\]"):
        scores("@fuzy", "heldout/acc", book)


def test_a_broken_ledger_line_is_named(tmp_path):
    book = tmp_path / "results.jsonl"
    book.write_text('{"method": "fuzzy", "task": "csl", "split": "0"}\n{"method": "fuzzy"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2: not JSON"):
        ledger.read(book)


def test_paths_in_the_overrides_are_kept_relative_to_the_recorded_folders_parent(tmp_path):
    _run(tmp_path / "runs" / "distill" / "tnews" / "0", "tnews", "0", 0.4, 0.5, commit="abc1234", machine="CPU")
    teachers = f"[{tmp_path}/runs/ck_v1/tnews/0,{tmp_path}/runs/ck_v2/tnews/0]"
    with open(tmp_path / "runs" / "distill" / "tnews" / "0" / ".hydra" / "overrides.yaml", "a") as overrides:
        overrides.write(f"- distill.teachers={teachers}\n- model.pretrained=/elsewhere/encoders/zh-mlm-small\n")
    book = tmp_path / "results.jsonl"
    record_runs.main(["distilled", str(tmp_path / "runs" / "distill"), "--ledger", str(book)])
    (record,) = ledger.read(book)
    assert record["overrides"][-2:] == ["distill.teachers=[ck_v1/tnews/0,ck_v2/tnews/0]",
                                        "model.pretrained=.../zh-mlm-small"]


def test_the_last_epoch_of_a_run_with_curves_is_recorded_as_selection_last(tmp_path, capsys):
    curves = {"dev_curve": [{"epoch": 1, "step": 4, "val/acc": 0.75}, {"epoch": 2, "step": 8, "val/acc": 0.625}],
              "heldout_curve": [{"epoch": 1, "step": 4, "heldout/acc": 0.6}, {"epoch": 2, "step": 8, "heldout/acc": 0.7}]}
    _run(tmp_path / "runs" / "0", "eprstmt", "0", 0.6, 0.75, commit="abc1234", machine="Some CPU", **curves)
    _run(tmp_path / "plain" / "0", "eprstmt", "0", 0.6, 0.75, commit="abc1234", machine="Some CPU")
    book = tmp_path / "results.jsonl"
    record_runs.main(["fuzzy, last", str(tmp_path / "runs"), "--last-epoch", "--ledger", str(book)])
    record = json.loads(book.read_text())
    # the selected epoch (1) scored 0.6 held out; the last one 0.7, with dev 0.625
    assert (record["heldout/acc"], record["val/acc"], record["selection"]) == (0.7, 0.625, "last")
    with pytest.raises(ConfigError, match="no held-out curve"):
        ledger.run_record(tmp_path / "plain" / "0", "fuzzy, last", last_epoch=True)
