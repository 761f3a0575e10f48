"""The FewCLUE protocol, timed: the default command (``python train.py task=T data.split=S``) per task and split,
each in its own process as a user types it, with the seconds of every phase.

    python benchmarks/protocol.py                                 # 9 tasks, split 0
    python benchmarks/protocol.py --splits 0,1,2,3,4 --tasks eprstmt,bustm
    python benchmarks/protocol.py --out runs/bench -- trainer.max_epochs=2   # overrides after --
    python benchmarks/protocol.py --tasks bustm --splits 0,1 -- stage=efl model.pretrained=runs/ent/{split}/export
    python benchmarks/protocol.py --tasks csl --splits 0,1,2,3,4 --out runs/v1 --record v1 -- verbalizer=v1

``{task}`` and ``{split}`` in an override stand for each run's task and split (a per-split export, for one).

Each run writes into ``OUT/<task>/<split>`` (OUT: ``benchmarks/runs/protocol-<time>``); its results.json gives the
phases (``timing``: start = process start to main, i.e. imports and config composition; data; model; trainer;
train; validate; checkpoint writes; test = the labelled test and held-out rows; predict = test.json) and the
accuracies. The table (``OUT/protocol.md``, also printed) adds the wall time of the whole process, the machine
(CPU model, cores) and the commit, and a total per column.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from datamodules.runs import ledger
from datamodules.runs.provenance import machine, source_commit
from datamodules.runs.results import RunFolder
from datamodules.tasks.task_configs import FEWCLUE_SPLITS, FEWCLUE_TASKS

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("start", "data", "model", "train", "validate", "checkpoint", "test", "predict")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(FEWCLUE_TASKS), help="comma-separated FewCLUE tasks")
    parser.add_argument("--splits", default="0", help=f"comma-separated splits of {', '.join(FEWCLUE_SPLITS)}")
    parser.add_argument("--out", type=Path, help="where the runs and the table go")
    parser.add_argument("--record", metavar="METHOD", help="add the finished runs to the results ledger under this "
                        "name (benchmarks/results.jsonl; scripts/heldout_table.py reads it as METHOD=@METHOD)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every run (after --)")
    return parser.parse_args(argv)


def train_command(task: str, split: str, run_dir: Path, overrides: list[str]) -> list[str]:
    """train.py's command line for one run, ``{task}`` and ``{split}`` in the overrides filled in."""
    filled = [override.replace("{task}", task).replace("{split}", split) for override in overrides]
    return [sys.executable, str(ROOT / "train.py"), f"task={task}", f"data.split={split}", f"hydra.run.dir={run_dir}",
            *filled]


def run_one(task: str, split: str, out: Path, overrides: list[str]) -> dict:
    run_dir = out / task / split
    command = train_command(task, split, run_dir, overrides)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    row = {"task": task, "split": split, "wall": round(wall, 1), "exit": done.returncode}
    if done.returncode != 0:
        row["error"] = (done.stderr.strip().splitlines() or ["?"])[-1]
        return row
    results = RunFolder(run_dir).results
    row.update({"val/acc": results.val_acc, "heldout/acc": results.heldout_acc, "test/acc": results.test_acc,
                "eval_precision": results.eval_precision, **(results.timing or {})})
    return row


def _cell(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if isinstance(value, float) and digits == 100 else f"{value:.{digits}f}"


def table(rows: list[dict], header: str) -> str:
    columns = ["task", "split", "wall s", *PHASES, "val/acc", "heldout/acc"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if row["exit"] != 0:
            lines.append(f"| {row['task']} | {row['split']} | {row['wall']:.0f} | exit {row['exit']}: {row['error']} |")
            continue
        phases = [_cell(row.get(phase)) for phase in PHASES]
        lines.append("| " + " | ".join([row["task"], row["split"], f"{row['wall']:.0f}", *phases,
                                         _cell(row.get("val/acc"), 100), _cell(row.get("heldout/acc"), 100)]) + " |")
    finished = [row for row in rows if row["exit"] == 0]
    totals = [f"{sum(row.get(phase) or 0.0 for row in finished):.0f}" for phase in PHASES]
    lines.append("| **total** | | " + f"{sum(row['wall'] for row in rows):.0f} | " + " | ".join(totals) + " | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "runs" / f"protocol-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    tasks, splits = args.tasks.split(","), args.splits.split(",")
    rows = []
    for task in tasks:
        for split in splits:
            rows.append(run_one(task, split, out, args.overrides))
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    header = (f"The default command per task and split (`python train.py task=T data.split=S "
              f"{' '.join(args.overrides)}`), seconds per phase; accuracy (%) on dev (chose the checkpoint) and on "
              f"the held-out rows. Machine: {machine()}. Commit {source_commit() or 'unknown'}, "
              f"{datetime.date.today()}.")
    text = table(rows, header)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.md").write_text(text, encoding="utf-8")
    (out / "protocol.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(text)
    if args.record:
        finished = [out / row["task"] / row["split"] for row in rows if row["exit"] == 0]
        ledger.add([ledger.run_record(run, args.record, root=out.resolve().parent) for run in finished], ledger.LEDGER)
        print(f"recorded {len(finished)} run(s) as {args.record!r} in {ledger.LEDGER}")


if __name__ == "__main__":
    main()
