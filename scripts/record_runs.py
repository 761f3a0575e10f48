"""Record finished train.py runs in the results ledger (benchmarks/results.jsonl) under a method's name, so the
results page's tables can be rebuilt from the repository (``scripts/heldout_table.py name=@method``).

    python scripts/record_runs.py fuzzy runs/fuzzy                    # every run under the folder
    python scripts/record_runs.py "mean set" ...                       # a name with a space
    python scripts/record_runs.py finetune runs/old --commit 9526717 --machine "AMD EPYC, 2 cores"
    python scripts/record_runs.py "fuzzy, last" runs/curves --last-epoch   # the final epoch of runs with curves

Runs written before results.json held ``commit`` and ``machine`` need them given. A method keeps one record per task
and split: a rerun replaces the earlier record (the replaced ones are listed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datamodules.runs import ledger
from datamodules.runs.results import RESULTS_FILE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("method", help="the method's name in the tables (fuzzy, finetune, v1, ...)")
    parser.add_argument("folders", nargs="+", type=Path, help="run folders, or folders holding run folders")
    parser.add_argument("--commit", help="for runs whose results.json has no commit")
    parser.add_argument("--machine", help="for runs whose results.json has no machine")
    parser.add_argument("--last-epoch", action="store_true",
                        help="record the final evaluation in training (runs with the held-out curve), what "
                             "selection=last tests, in place of the selected checkpoint's")
    parser.add_argument("--ledger", type=Path, default=ledger.LEDGER)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = {path.parent: folder for folder in args.folders for path in folder.rglob(RESULTS_FILE)}
    if not runs:
        raise SystemExit(f"no {RESULTS_FILE} under {', '.join(map(str, args.folders))}")
    # paths in the overrides (other runs: teachers, exports) relative to the folder above the given one
    new = [ledger.run_record(run, args.method, args.commit, args.machine, root=folder.resolve().parent,
                             last_epoch=args.last_epoch) for run, folder in sorted(runs.items())]
    for record in ledger.add(new, args.ledger):
        print(f"replaces {record['method']} {record['task']} split {record['split']} "
              f"(heldout/acc {record['heldout/acc']}, commit {record['commit']})")
    print(f"recorded {len(new)} run(s) as {args.method!r} in {args.ledger}")


if __name__ == "__main__":
    main()
