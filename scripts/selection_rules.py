"""Checkpoint selection rules compared on the same runs: each rule picks an epoch from a run's dev curve, and the
run's held-out curve says what that epoch scores. Needs runs made with the held-out curve
(``+callbacks.heldout_curve._target_=callbacks.heldout_curve.HeldoutCurve``, callbacks/heldout_curve.py).

    python scripts/selection_rules.py runs/fuzzy [--tasks eprstmt,bustm] [--baseline "best dev"]

Rules: ``best dev`` (the first epoch with the highest dev accuracy: what ModelCheckpoint keeps, so it reproduces
each run's ``heldout/acc``), ``best dev, latest`` (the last of the epochs tied for it), ``smoothed dev`` (the
highest mean of dev accuracy over an epoch and the two before it, the latest on ties: a rule a run can apply as it
trains), ``last`` (the final epoch, no
selection), and ``held-out best``, an oracle no run can use: the ceiling of any rule. The table is
scripts/heldout_table.py's, one column per rule; dev accuracy in brackets is the chosen epoch's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from datamodules.runs.results import RESULTS_FILE, RunFolder
try:
    from scripts.heldout_table import Score, table
except ModuleNotFoundError:  # run as `python scripts/selection_rules.py`, where scripts/ itself is on the path
    from heldout_table import Score, table

Rule = Callable[[list[float], list[float]], int]


def best_dev(dev: list[float], heldout: list[float]) -> int:
    return dev.index(max(dev))


def best_dev_latest(dev: list[float], heldout: list[float]) -> int:
    return len(dev) - 1 - dev[::-1].index(max(dev))


def smoothed_dev(dev: list[float], heldout: list[float]) -> int:
    smoothed = [sum(dev[max(0, i - 2):i + 1]) / len(dev[max(0, i - 2):i + 1]) for i in range(len(dev))]
    return best_dev_latest(smoothed, heldout)


def last(dev: list[float], heldout: list[float]) -> int:
    return len(dev) - 1


def heldout_best(dev: list[float], heldout: list[float]) -> int:
    return heldout.index(max(heldout))


RULES: dict[str, Rule] = {"best dev": best_dev, "best dev, latest": best_dev_latest, "smoothed dev": smoothed_dev,
                          "last": last, "held-out best": heldout_best}


def curves(results: dict) -> tuple[list[float], list[float]] | None:
    """The run's dev and held-out accuracy per evaluation, or None when the run has no held-out curve or the two
    curves are not of the same evaluations."""
    dev, heldout = results.get("dev_curve") or [], results.get("heldout_curve") or []
    if not heldout or [p["step"] for p in dev] != [p["step"] for p in heldout]:
        return None
    return [p["val/acc"] for p in dev], [p["heldout/acc"] for p in heldout]


def rule_scores(folders: list[Path]) -> tuple[dict[str, dict[tuple[str, str], Score]], list[Path]]:
    """Per rule, (task, split) -> the chosen epoch's Score; and the run folders left out (no held-out curve)."""
    scores: dict[str, dict[tuple[str, str], Score]] = {name: {} for name in RULES}
    skipped = []
    for folder in folders:
        for results_file in sorted(folder.rglob(RESULTS_FILE)):
            results = RunFolder(results_file.parent).results.to_dict()
            found = curves(results)
            if found is None:
                skipped.append(results_file.parent)
                continue
            dev, heldout = found
            key = (str(results["task"]), str(results["split"]))
            for name, rule in RULES.items():
                chosen = rule(dev, heldout)
                scores[name][key] = Score(heldout[chosen], dev[chosen], None)
    return scores, skipped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders of train.py runs (searched recursively)")
    parser.add_argument("--baseline", default="best dev", choices=list(RULES))
    parser.add_argument("--tasks", help="comma-separated tasks to show (default: every task found)")
    args = parser.parse_args(argv)
    scores, skipped = rule_scores(args.folders)
    if args.tasks:
        shown = set(args.tasks.split(","))
        scores = {name: {key: s for key, s in runs.items() if key[0] in shown} for name, runs in scores.items()}
    for folder in skipped:
        print(f"left out (no held-out curve): {folder}", file=sys.stderr)
    print(table(scores, args.baseline, "heldout/acc").split("\nSeconds per run")[0].rstrip())


if __name__ == "__main__":
    main()
