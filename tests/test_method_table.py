"""scripts/method_table.py: the queue of cells (order, resume, distillation's teachers) and the table's numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("method_table", ROOT / "scripts" / "method_table.py")
method_table = importlib.util.module_from_spec(spec)
sys.modules["method_table"] = method_table  # dataclasses look their module up
spec.loader.exec_module(method_table)
Cell = method_table.Cell


@pytest.fixture(autouse=True)
def no_tuned_files(tmp_path_factory, monkeypatch):
    """The queue's plan does not depend on what conf/tuned/ holds today (a test that wants a file writes its own)."""
    monkeypatch.setattr(method_table, "TUNED_DIR", tmp_path_factory.mktemp("no_tuned"))


def write_result(out: Path, method: str, task: str, split: str, acc: float, wall: float | None = None) -> None:
    run = out / method / task / split
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.json").write_text(json.dumps({"val/acc": acc, "task": task}))
    if wall is not None:
        (run / "wall_s.json").write_text(json.dumps({"wall_s": wall}))


def test_methods_follow_the_task_files():
    scoring = ["fuzzy_mean", "fuzzy_cal", "fuzzy_cal_sets", "fuzzy_cal_init"]
    assert method_table.methods_of("eprstmt") == ["finetune", "fuzzy", *scoring, "pet_v1", "pet_v2", "pet_v3", "fuzzy_st", "distill"]
    # chid scores its candidates (no label-word sets); csldcp has no unlabeled.json
    assert method_table.methods_of("chid") == ["finetune", "fuzzy", *scoring, "fuzzy_st", "distill"]
    assert "fuzzy_st" not in method_table.methods_of("csldcp")
    assert method_table.word_lengths("csldcp") == {2, 3, 4, 5, 6} and method_table.methods_of("csldcp")[-1] == "fuzzy_longest"


def test_queue_order_puts_the_main_comparison_first():
    cells = method_table.plan(["eprstmt", "tnews"], ["0", "1"], [])
    first = [(c.method, c.task, c.split) for c in cells[:4]]
    assert first == [("finetune", "eprstmt", "0"), ("fuzzy", "eprstmt", "0"), ("finetune", "tnews", "0"), ("fuzzy", "tnews", "0")]
    # a large task's other splits come last
    assert all(c.task == "tnews" and c.split == "1" for c in cells[-12:])
    assert len(cells) == 2 * 11 + 2 * 12  # tnews's words have 2-4 characters: + fuzzy_longest


def test_methods_filter_and_resume(tmp_path):
    cells = method_table.plan(["bustm"], ["0"], ["pet", "distill"])
    assert [c.method for c in cells] == ["pet_v1", "pet_v2", "pet_v3", "distill"]
    distill = cells[-1]
    assert not method_table.ready(distill, tmp_path)  # teachers missing
    for method in ("fuzzy", "pet_v1", "pet_v2", "pet_v3"):
        write_result(tmp_path, method, "bustm", "0", 0.5)
    assert not method_table.ready(distill, tmp_path)  # results without unlabeled_probs.pt (a seeded run) teach nothing
    for method in ("fuzzy", "pet_v1", "pet_v2", "pet_v3"):
        (tmp_path / method / "bustm" / "0" / "unlabeled_probs.pt").touch()
    assert method_table.ready(distill, tmp_path)
    teachers = next(o for o in method_table.overrides(distill, tmp_path) if o.startswith("distill.teachers="))
    assert teachers == "distill.teachers=[" + ",".join(str(tmp_path / m / "bustm" / "0") for m in ("fuzzy", "pet_v1", "pet_v2", "pet_v3")) + "]"
    assert Cell("pet_v1", "bustm", "0").done(tmp_path) and not distill.done(tmp_path)


def test_only_fuzzy_tuned_runs_with_conf_tuned_and_only_where_the_task_has_a_file(tmp_path, monkeypatch):
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "csl_fuzzy_pet.yaml").write_text("# @package _global_\ntrainer:\n  max_epochs: 12\n")
    monkeypatch.setattr(method_table, "TUNED_DIR", tuned)
    assert "fuzzy_tuned" in method_table.methods_of("csl") and "fuzzy_tuned" not in method_table.methods_of("bustm")
    out = tmp_path / "out"
    assert "~tuned" not in method_table.command(Cell("fuzzy_tuned", "csl", "0"), out)
    assert "~tuned" in method_table.command(Cell("fuzzy", "csl", "0"), out)
    write_result(out, "finetune", "csl", "0", 0.5)
    write_result(out, "fuzzy", "csl", "0", 0.55)
    write_result(out, "fuzzy_tuned", "csl", "0", 0.7)
    write_result(out, "finetune", "bustm", "0", 0.5)
    write_result(out, "fuzzy", "bustm", "0", 0.6)
    text = method_table.table(out)
    assert "- Fuzzy-PET minus fine-tuning on the same splits, mean over 2 tasks: +7.5 points" in text
    # csl takes its tuned runs (+20), bustm the stage defaults (+10)
    assert "- The default command (conf/tuned where it has the task) minus fine-tuning on the same splits, mean over " \
           "2 tasks: +15.0 points (bustm +10.0 (n=1), csl +20.0 (n=1))." in text


def test_a_cell_finished_by_another_queue_meanwhile_is_not_run_again(tmp_path, monkeypatch):
    cells = [Cell("fuzzy", "eprstmt", "0"), Cell("fuzzy", "eprstmt", "1")]
    started = []

    def fake_call(command, **kwargs):
        started.append(next(o for o in command if o.startswith("data.split=")))
        write_result(tmp_path, "fuzzy", "eprstmt", "1", 0.5)  # meanwhile another queue finishes split 1
        write_result(tmp_path, "fuzzy", "eprstmt", "0", 0.5)
        return 0

    monkeypatch.setattr(method_table.subprocess, "call", fake_call)
    assert method_table.run_queue(cells, tmp_path) == 0
    assert started == ["data.split=0"]
    assert (tmp_path / "fuzzy" / "eprstmt" / "0" / "wall_s.json").is_file()


def test_commands_name_the_run_dir_and_settings(tmp_path):
    command = method_table.command(Cell("finetune", "csldcp", "3"), tmp_path)
    assert command[2:] == ["experiment=finetune_zh_mlm_small", "task=csldcp", "data.split=3", "trainer.max_epochs=5",
                           *method_table.COMMON, "~tuned", f"hydra.run.dir={tmp_path / 'finetune' / 'csldcp' / '3'}"]
    assert "callbacks.self_training.rounds=1" in method_table.command(Cell("fuzzy_st", "tnews", "0"), tmp_path)
    assert "verbalizer=v2" in method_table.command(Cell("pet_v2", "ocnli", "0"), tmp_path)
    sets = method_table.command(Cell("fuzzy_cal_sets", "csl", "0"), tmp_path)
    assert sets[2:7] == ["experiment=fuzzy_pet_zh_mlm_small", "task=csl", "data.split=0", "stage.word_score=calibrated",
                         "stage.pooling=sets"]


def test_table_numbers(tmp_path):
    # eprstmt: fine-tuning 0.5 / 0.7 -> 60.0 ± 14.1; sets v1 mean 65, v2 mean 55 -> best v1, worst v2, spread 10.0
    write_result(tmp_path, "finetune", "eprstmt", "0", 0.5, wall=100)
    write_result(tmp_path, "finetune", "eprstmt", "1", 0.7, wall=140)
    write_result(tmp_path, "pet_v1", "eprstmt", "0", 0.6)
    write_result(tmp_path, "pet_v1", "eprstmt", "1", 0.7)
    write_result(tmp_path, "pet_v2", "eprstmt", "0", 0.55)
    write_result(tmp_path, "fuzzy", "eprstmt", "0", 0.75, wall=60)
    text = method_table.table(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| eprstmt |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "60.0 ± 14.1 (n=2)"
    assert cells[2] == "65.0 ± 7.1 (n=2) v1"
    assert cells[3] == "55.0 (n=1) v2"
    assert cells[4] == "75.0 (n=1)"
    assert cells[5] == "(= Fuzzy-PET)"  # the default command without a conf/tuned file
    assert cells[6] == cells[7] == "–"
    assert cells[8] == "10.0"
    assert cells[9] == "120 / 60"  # median wall seconds
    assert "(1 of 9 tasks)" in text  # no FewCLUE score before every task has the method
    # claims compare paired splits: only split 0 has fuzzy and every set (v1 60, v2 55, fuzzy 75)
    assert "≥ the best single set on 1 of 1 tasks (eprstmt); splits where every set and Fuzzy-PET ran: eprstmt n=1." in text
    assert "upper half of the sets' range (best − Fuzzy-PET ≤ (best − worst) / 2) on 1 of 1 tasks (eprstmt)" in text
    assert "Fuzzy-PET minus the worst set: +20.0 points" in text
    # fine-tuning on split 0 only (50): +25, not 75 - 60
    assert "Fuzzy-PET minus fine-tuning on the same splits, mean over 1 tasks: +25.0 points (eprstmt +25.0 (n=1))." in text


def test_fewclue_score_needs_every_task(tmp_path):
    for i, task in enumerate(method_table.TASKS):
        write_result(tmp_path, "fuzzy", task, "0", i / 10)
    score_row = next(line for line in method_table.table(tmp_path).splitlines() if "FewCLUE score" in line)
    assert [c.strip() for c in score_row.strip("|").split("|")][4] == f"{100 * sum(range(9)) / 10 / 9:.1f}"


def test_scoring_table_compares_each_option_with_sum_words_on_the_splits_both_have(tmp_path):
    for method, accs in {"fuzzy": (0.5, 0.9), "fuzzy_mean": (0.6, 0.9), "fuzzy_cal": (0.7,), "fuzzy_cal_sets": (0.8, 0.1)}.items():
        for split, acc in enumerate(accs):
            write_result(tmp_path, method, "ocnli", str(split), acc)
    write_result(tmp_path, "fuzzy", "bustm", "0", 0.5)
    write_result(tmp_path, "fuzzy_cal", "bustm", "0", 0.6)
    lines = method_table.scoring_table(method_table.collect(tmp_path), ["ocnli", "bustm", "csl"])
    # mean: 75 vs 70 on splits 0,1; calibrated: 70 vs 50 on split 0 only; calibrated/sets: 45 vs 70 on 0,1
    assert "| ocnli | 70.0 (0,1) | 75.0 (+5.0, n=2) | 70.0 (+20.0, n=1) | 45.0 (-25.0, n=2) | – |" in lines
    assert "| bustm | 50.0 (0) | – | 60.0 (+10.0, n=1) | – | – |" in lines
    assert not any(line.startswith("| csl") for line in lines)  # nothing to compare
    assert lines[-1] == "| mean difference | | +5.0 (1 tasks) | +15.0 (2 tasks) | -25.0 (1 tasks) | – |"


def test_slots_table_compares_accuracy_and_wall_time(tmp_path):
    write_result(tmp_path, "fuzzy", "csldcp", "0", 0.30, wall=2000)
    write_result(tmp_path, "fuzzy", "csldcp", "1", 0.40, wall=2200)
    write_result(tmp_path, "fuzzy_longest", "csldcp", "0", 0.25, wall=500)
    lines = method_table.slots_table(method_table.collect(tmp_path), method_table.walls(tmp_path), ["csldcp"])
    assert lines[-1] == "| csldcp | 0 | 30.0 | 25.0 | 2100 / 500 |"


def test_fuzzy_column_takes_longest_slots_only_where_no_exact_run_exists(tmp_path):
    write_result(tmp_path, "fuzzy", "tnews", "0", 0.40, wall=470)
    write_result(tmp_path, "fuzzy_longest", "tnews", "0", 0.90, wall=190)  # exact exists: longest stays out of the column
    write_result(tmp_path, "fuzzy_longest", "iflytek", "0", 0.20, wall=900)
    write_result(tmp_path, "finetune", "iflytek", "0", 0.15, wall=1500)
    text = method_table.table(tmp_path)
    main_table = text.split("\n\n")[1].splitlines()
    row = {line.split(" | ")[0]: line.split(" | ") for line in main_table}
    assert row["| tnews"][4] == "40.0 (n=1)"
    assert row["| iflytek"][4] == "20.0 (n=1) slots=longest" and row["| iflytek"][-1] == "1500 / 900 |"
    assert "Fuzzy-PET minus fine-tuning on the same splits, mean over 1 tasks: +5.0 points (iflytek +5.0 (n=1))." in text
    assert row["| iflytek"][5] == "(= Fuzzy-PET)"  # no conf/tuned file: the default command is the stage's


def test_fewclue_score_needs_every_task_and_the_default_command_falls_back_to_the_stage(tmp_path, monkeypatch):
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "eprstmt_fuzzy_pet.yaml").write_text("trainer:\n  max_epochs: 12\n")
    monkeypatch.setattr(method_table, "TUNED_DIR", tuned)
    out = tmp_path / "runs"
    for i, task in enumerate(method_table.TASKS):
        write_result(out, "finetune", task, "0", 0.10 * (i % 5))  # 0, 10, 20, 30, 40, 0, 10, 20, 30: mean 160 / 9
        write_result(out, "fuzzy", task, "0", 0.50)
    write_result(out, "fuzzy_tuned", "eprstmt", "0", 0.59)
    text = method_table.table(out)
    score = next(line for line in text.splitlines() if line.startswith("| **FewCLUE score**")).split(" | ")
    assert score[1] == "17.8" and score[4] == "50.0"
    assert score[5] == "51.0"  # (59 + 8 * 50) / 9: eprstmt's tuned run, the stage's runs elsewhere
    assert score[2] == "(0 of 9 tasks)"  # no PET single-set runs
    write_result(out, "fuzzy", "eprstmt", "1", 0.95)  # the mean over splits moves; split 0 alone does not
    lines = method_table.table(out).splitlines()
    score = next(line for line in lines if line.startswith("| **FewCLUE score**")).split(" | ")
    only0 = next(line for line in lines if line.startswith("| FewCLUE score, split 0 only")).split(" | ")
    assert score[4] == "52.5" and only0[4] == "50.0"  # (72.5 + 8 * 50) / 9
    assert only0[1] == "17.8"


@pytest.mark.parametrize("argv", [["plan", "--tasks", "nope"]])
def test_unknown_task_is_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        method_table.main(argv)
    assert exit_info.value.code == 2
    assert "nope" in capsys.readouterr().err
