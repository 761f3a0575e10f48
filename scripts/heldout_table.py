"""Methods side by side on the held-out estimate: one folder of runs per method (benchmarks/protocol.py's --out, or
any folder of train.py runs), per task the mean ± sample std of ``heldout/acc`` over splits (n), the paired
difference of each method against the baseline over the splits both ran, and the mean over tasks.

    python scripts/heldout_table.py finetune=runs/finetune fuzzy=runs/fuzzy pooled=runs/pooled [--baseline finetune]
    python scripts/heldout_table.py fuzzy=runs/fuzzy,runs/fuzzy_more "mean set=runs/v1+runs/v2+runs/v3"
    python scripts/heldout_table.py finetune=@finetune fuzzy=@fuzzy "mean set=@v1+@v2+@v3"   # from the ledger

A method's folders joined by ``,`` are one method's runs (a later folder's run of the same task and split wins);
joined by ``+`` they are averaged per task and split over the folders that all ran it (e.g. the mean single
label-word set; ``,`` binds tighter, so ``@v1,runs/v1_more+@v2,runs/v2_more`` averages two unions). ``@name``
reads the runs recorded as ``name`` in the results ledger (benchmarks/results.jsonl, scripts/record_runs.py) in
place of a folder. The last lines count, per method, the tasks where it is ahead of the
baseline over the splits both ran, and where its spread over those splits is at most the baseline's. The FewCLUE score (the mean over the nine
tasks) is given for a method that ran all nine, in a table that shows all nine (``--tasks`` limits a table), and
its paired difference from the baseline's, each task counted on the splits both ran. A last
table gives the median seconds per run (the phases in results.json's ``timing``, process start to test prediction).

Dev accuracy (``val/acc``, which chose each run's checkpoint) is shown beside it, never in place of it.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from datamodules.runs import ledger
from datamodules.runs.results import RESULTS_FILE, RunFolder
from datamodules.tasks.task_configs import FEWCLUE_TASKS


class Score(NamedTuple):
    """One run's ``--metric`` (heldout/acc or test/acc), its dev accuracy (which chose the checkpoint) and its
    seconds (None: not timed)."""

    metric: float
    dev: float
    seconds: float | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("methods", nargs="+", help="name=folder, one per method")
    parser.add_argument("--baseline", help="the method the others are compared with (default: the first)")
    parser.add_argument("--metric", default="heldout/acc", help="heldout/acc (default) or test/acc")
    parser.add_argument("--tasks", help="comma-separated tasks to show (default: every task a method ran)")
    parser.add_argument("--ledger", type=Path, default=ledger.LEDGER, help="the results ledger @name reads")
    return parser.parse_args(argv)


def scores(source: str | Path, metric: str, ledger_file: Path = ledger.LEDGER) -> dict[tuple[str, str], Score]:
    """(task, split) -> the Score of every finished run under the folder ``source``, or of the runs recorded in the
    ledger as the method ``@name``."""
    if isinstance(source, str) and source.startswith("@"):
        return {(str(r["task"]), str(r["split"])): Score(float(r[metric]), float(r["val/acc"]), r.get("seconds"))
                for r in ledger.method_records(source[1:], ledger_file) if r.get(metric) is not None}
    found = {}
    for results_file in sorted(Path(source).rglob(RESULTS_FILE)):
        results = RunFolder(results_file.parent).results.to_dict()
        if results.get(metric) is not None:
            timing = results.get("timing")
            found[(str(results["task"]), str(results["split"]))] = Score(
                float(results[metric]), float(results["val/acc"]), sum(timing.values()) if timing else None)
    return found


def _mean_score(parts: list[Score]) -> Score:
    seconds = [part.seconds for part in parts if part.seconds is not None]
    return Score(statistics.fmean(part.metric for part in parts), statistics.fmean(part.dev for part in parts),
                 statistics.fmean(seconds) if seconds else None)


def method_scores(spec: str, metric: str, ledger_file: Path = ledger.LEDGER) -> dict[tuple[str, str], Score]:
    """The runs of a method given as folders (or ``@name``) joined by ``,`` (union) or ``+`` (mean per task and
    split); ``,`` binds tighter: ``@v1,runs/v1_more+@v2`` averages v1's runs from both sources with v2's."""
    if "+" in spec:
        parts = [method_scores(part, metric, ledger_file) for part in spec.split("+")]
        shared = set.intersection(*(set(part) for part in parts))
        return {key: _mean_score([part[key] for part in parts]) for key in shared}
    found: dict[tuple[str, str], Score] = {}
    for source in spec.split(","):
        found.update(scores(source, metric, ledger_file))
    return found


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{points(statistics.fmean(values))} ± {100 * std:.1f} ({len(values)})"


def points(value: float) -> str:
    """A share in points with one decimal; a value that rounds to zero has no sign."""
    text = f"{100 * value:.1f}"
    return "0.0" if text == "-0.0" else text


def table(methods: dict[str, dict], baseline: str, metric: str) -> str:
    tasks = sorted({task for runs in methods.values() for task, _ in runs})
    names = list(methods)
    lines = [f"{metric} (%), mean ± sample std over splits (n); dev accuracy (chose the checkpoint) in brackets", "",
             "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    per_task: dict[str, dict[str, float]] = defaultdict(dict)
    for task in tasks:
        cells = []
        for name in names:
            runs = [value for (t, _), value in sorted(methods[name].items()) if t == task]
            values, dev = [run.metric for run in runs], [run.dev for run in runs]
            if values:
                per_task[name][task] = statistics.fmean(values)
            cells.append(f"{mean_std(values)} [{100 * statistics.fmean(dev):.1f}]" if runs else "-")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    complete = [task for task in tasks if all(task in per_task[name] for name in names)]
    if complete:  # no row when no task has a cell in every column
        means = [points(statistics.fmean(per_task[name][t] for t in complete)) for name in names]
        over = f"{len(complete)} task{'' if len(complete) == 1 else 's'}"
        lines.append(f"| **mean over {over}** | " + " | ".join(means) + " |")
    if set(FEWCLUE_TASKS) <= set(tasks):
        fewclue = " | ".join(_fewclue_score(per_task[name]) for name in names)
        lines.append(f"| **FewCLUE score (9 tasks)** | {fewclue} |")
    lines += ["", f"Paired differences against {baseline} (points, mean ± sample std over the splits both ran; n; "
                  "splits where the method is ahead / behind):", "",
              "| task | " + " | ".join(n for n in names if n != baseline) + " |", "|---|" + "---|" * (len(names) - 1)]
    mean_diff: dict[str, dict[str, float]] = defaultdict(dict)
    for task in tasks:
        cells = []
        for name in names:
            if name == baseline:
                continue
            diffs = [ours - theirs for ours, theirs in zip(*_paired(methods[name], methods[baseline], task))]
            ahead, behind = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            cells.append(f"{mean_std(diffs)} {ahead}/{behind}" if diffs else "-")
            if diffs:
                mean_diff[name][task] = statistics.fmean(diffs)
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if set(FEWCLUE_TASKS) <= set(tasks):
        # the difference of the two FewCLUE scores, each task counted on the splits both methods ran
        fewclue = " | ".join(_fewclue_score(mean_diff[name]) for name in names if name != baseline)
        lines.append(f"| **FewCLUE score, paired** | {fewclue} |")
    lines += ["", f"Against {baseline}, over the tasks both ran:", ""]
    for name in names:
        if name == baseline:
            continue
        paired = {t: _paired(methods[name], methods[baseline], t) for t in tasks}
        shared_tasks = [t for t in tasks if paired[t][0]]
        ahead = [t for t in shared_tasks if statistics.fmean(paired[t][0]) > statistics.fmean(paired[t][1])]
        spreads = [t for t in shared_tasks if len(paired[t][0]) > 1]
        steadier = [t for t in spreads if statistics.stdev(paired[t][0]) <= statistics.stdev(paired[t][1])]
        lines.append(f"- {name}: ahead on the splits both ran on {len(ahead)} of {len(shared_tasks)} tasks; spread "
                     f"over those splits at most {baseline}'s on {len(steadier)} of {len(spreads)} (tasks with 2 or "
                     "more)")
    lines += ["", "Seconds per run (median over the splits; the phases in results.json's `timing`):", "",
              "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for task in tasks:
        cells = []
        for name in names:
            seconds = [run.seconds for (t, _), run in methods[name].items() if t == task and run.seconds is not None]
            cells.append(f"{statistics.median(seconds):.0f}" if seconds else "-")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fewclue_score(per_task: dict[str, float]) -> str:
    """The mean over the nine FewCLUE tasks, or how many of them the method ran."""
    ran = [task for task in FEWCLUE_TASKS if task in per_task]
    if len(ran) < len(FEWCLUE_TASKS):
        return f"- ({len(ran)} of {len(FEWCLUE_TASKS)})"
    return points(statistics.fmean(per_task[task] for task in FEWCLUE_TASKS))


def _paired(runs: dict, baseline: dict, task: str) -> tuple[list[float], list[float]]:
    """The method's and the baseline's scores of ``task`` on the splits both ran, in split order."""
    shared = sorted(key for key in runs if key[0] == task and key in baseline)
    return [runs[key].metric for key in shared], [baseline[key].metric for key in shared]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    methods = {}
    for entry in args.methods:
        name, _, folder = entry.partition("=")
        methods[name] = method_scores(folder, args.metric, args.ledger)
    if args.tasks:
        shown = set(args.tasks.split(","))
        methods = {name: {key: run for key, run in runs.items() if key[0] in shown} for name, runs in methods.items()}
    print(table(methods, args.baseline or next(iter(methods)), args.metric))


if __name__ == "__main__":
    main()
