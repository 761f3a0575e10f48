"""scripts/heldout_table.py: held-out means, stds and paired differences by hand."""

from __future__ import annotations

import json

from scripts.heldout_table import scores, table


def _run(folder, task, split, heldout, dev):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"task": task, "split": split, "heldout/acc": heldout,
                                                     "val/acc": dev}))


def test_means_stds_and_paired_differences_by_hand(tmp_path):
    for split, (base, new) in enumerate([(0.50, 0.60), (0.70, 0.75), (0.60, 0.55)]):
        _run(tmp_path / "base" / str(split), "eprstmt", str(split), base, 0.9)
        _run(tmp_path / "new" / str(split), "eprstmt", str(split), new, 0.8)
    _run(tmp_path / "new" / "x", "bustm", "0", 0.5, 0.5)  # a task the baseline lacks: not in the mean over tasks
    text = table({"base": scores(tmp_path / "base", "heldout/acc"), "new": scores(tmp_path / "new", "heldout/acc")},
                 "base", "heldout/acc")
    # base 60.0 ± 10.0, new 63.3 ± 10.4; differences +10, +5, -5: mean 3.3, std 7.6, 2 ahead, 1 behind
    assert "| eprstmt | 60.0 ± 10.0 (3) [90.0] | 63.3 ± 10.4 (3) [80.0] |" in text
    assert "| **mean over 1 task** | 60.0 | 63.3 |" in text
    assert "| eprstmt | 3.3 ± 7.6 (3) 2/1 |" in text
    assert "| bustm | - | 50.0 ± 0.0 (1) [50.0] |" in text


def test_no_mean_row_when_no_task_has_every_column(tmp_path):
    _run(tmp_path / "base" / "0", "eprstmt", "0", 0.5, 0.5)
    _run(tmp_path / "new" / "0", "bustm", "0", 0.6, 0.6)
    text = table({"base": scores(tmp_path / "base", "heldout/acc"), "new": scores(tmp_path / "new", "heldout/acc")},
                 "base", "heldout/acc")
    assert "| eprstmt | 50.0 ± 0.0 (1) [50.0] | - |" in text and "mean over" not in text


def test_folders_joined_by_plus_are_averaged_per_split_and_by_comma_unioned(tmp_path):
    from scripts.heldout_table import method_scores

    for name, values in {"v1": (0.5, 0.7), "v2": (0.6, 0.9), "v3": (0.7, 0.8)}.items():
        for split, value in enumerate(values):
            _run(tmp_path / name / str(split), "csl", str(split), value, 0.5)
    _run(tmp_path / "v1" / "only", "csl", "2", 0.1, 0.5)  # split 2 only in v1: not averaged
    mean_set = method_scores(f"{tmp_path / 'v1'}+{tmp_path / 'v2'}+{tmp_path / 'v3'}", "heldout/acc")
    assert set(mean_set) == {("csl", "0"), ("csl", "1")}
    assert abs(mean_set[("csl", "0")][0] - 0.6) < 1e-9 and abs(mean_set[("csl", "1")][0] - 0.8) < 1e-9
    union = method_scores(f"{tmp_path / 'v2'},{tmp_path / 'v3'}", "heldout/acc")
    assert union[("csl", "0")][0] == 0.7  # the later folder wins
    _run(tmp_path / "v2_more" / "2", "csl", "2", 0.4, 0.5)
    _run(tmp_path / "v3_more" / "2", "csl", "2", 0.7, 0.5)
    extended = method_scores(f"{tmp_path / 'v1'}+{tmp_path / 'v2'},{tmp_path / 'v2_more'}+"
                             f"{tmp_path / 'v3'},{tmp_path / 'v3_more'}", "heldout/acc")
    assert abs(extended[("csl", "2")][0] - 0.4) < 1e-9  # (0.1 + 0.4 + 0.7) / 3: each part a union
    assert abs(extended[("csl", "0")][0] - 0.6) < 1e-9
    text = table({"base": method_scores(str(tmp_path / "v1"), "heldout/acc"), "mean set": mean_set}, "base",
                 "heldout/acc")
    # on the splits both ran (0, 1): base 0.5, 0.7 (std 14.1), mean set 0.6, 0.8 (std 14.1): ahead, as steady
    assert ("- mean set: ahead on the splits both ran on 1 of 1 tasks; spread over those splits at most base's on "
            "1 of 1 (tasks with 2 or more)") in text


def test_the_fewclue_score_needs_all_nine_tasks_and_seconds_are_medians(tmp_path):
    from scripts.heldout_table import FEWCLUE_TASKS

    for n, task in enumerate(FEWCLUE_TASKS):
        (tmp_path / "all" / task).mkdir(parents=True)
        (tmp_path / "all" / task / "results.json").write_text(json.dumps(
            {"task": task, "split": "0", "heldout/acc": n / 10, "val/acc": 0.5, "timing": {"start": 1.0, "train": n}}))
    for split, seconds in enumerate([10.0, 30.0, 20.0]):
        (tmp_path / "some" / str(split)).mkdir(parents=True)
        (tmp_path / "some" / str(split) / "results.json").write_text(json.dumps(
            {"task": "eprstmt", "split": str(split), "heldout/acc": 0.5, "val/acc": 0.5, "timing": {"train": seconds}}))
    text = table({"all": scores(tmp_path / "all", "heldout/acc"), "some": scores(tmp_path / "some", "heldout/acc")},
                 "all", "heldout/acc")
    # all: (0 + 0.1 + ... + 0.8) / 9 = 0.4; some ran 1 of the 9 tasks
    assert "| **FewCLUE score (9 tasks)** | 40.0 | - (1 of 9) |" in text
    # eprstmt is the first task: all's run took 1 + 0 s; some's three runs 10, 30, 20 s (median 20); csl's 1 + 3 s
    assert "| eprstmt | 1 | 20 |" in text and "| csl | 4 | - |" in text


def test_tasks_limits_the_table_and_a_mean_that_rounds_to_zero_has_no_sign(tmp_path, capsys):
    from scripts.heldout_table import main

    _run(tmp_path / "base" / "0", "csl", "0", 0.5000, 0.5)
    _run(tmp_path / "base" / "1", "csl", "1", 0.6000, 0.5)
    _run(tmp_path / "new" / "0", "csl", "0", 0.5001, 0.5)
    _run(tmp_path / "new" / "1", "csl", "1", 0.5998, 0.5)
    _run(tmp_path / "new" / "2", "bustm", "0", 0.7, 0.5)
    main([f"base={tmp_path / 'base'}", f"new={tmp_path / 'new'}", "--tasks", "csl"])
    text = capsys.readouterr().out
    # differences +0.01 and -0.02 points: mean -0.005, shown as 0.0
    assert "| csl | 0.0 ± 0.0 (2) 1/1 |" in text
    assert "bustm" not in text


def test_the_paired_fewclue_score_counts_each_task_on_the_splits_both_ran(tmp_path):
    from scripts.heldout_table import FEWCLUE_TASKS

    for task in FEWCLUE_TASKS:
        _run(tmp_path / "base" / task / "0", task, "0", 0.5, 0.5)
        _run(tmp_path / "base" / task / "1", task, "1", 0.9, 0.5)
        _run(tmp_path / "new" / task / "0", task, "0", 0.6, 0.5)
        if task != "csl":
            _run(tmp_path / "some" / task / "0", task, "0", 0.4, 0.5)
    text = table({name: scores(tmp_path / name, "heldout/acc") for name in ("base", "new", "some")}, "base",
                 "heldout/acc")
    # unpaired, base 70.0 (0.5 and 0.9 on every task) is above new's 60.0; on split 0, the one both ran, new is +10
    # on every task; some ran 8 of the 9 tasks
    assert "| **FewCLUE score (9 tasks)** | 70.0 | 60.0 | - (8 of 9) |" in text
    assert "| **FewCLUE score, paired** | 10.0 | - (8 of 9) |" in text
