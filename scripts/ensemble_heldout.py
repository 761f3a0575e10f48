"""Separately trained runs pooled as one classifier, on the held-out rows: PET's ensemble (one model per label-word
set or pattern, their class distributions averaged), against its members and the runs that train every set in one
model.

    python scripts/ensemble_heldout.py runs/v1 runs/v2 runs/v3 --out runs/ensemble [--weighting train_acc_before]
    python scripts/heldout_table.py "mean set=runs/v1+runs/v2+runs/v3" ensemble=runs/ensemble fuzzy=runs/fuzzy

Each folder holds finished runs that kept their checkpoints (benchmarks/protocol.py's --out, or any folder of
train.py runs); runs of the same task and split in different folders are one ensemble. Every member is scored with
its selected checkpoint on the dev rows and on the held-out rows of the first member's data config (the members
must agree on it: the same split, seed and ``data.heldout_max``). The ensemble's class distribution is the weighted
mean of the members' distributions, ``stage.pooling=sets`` across models, with weights ``uniform`` or PET's
``train_acc_before`` (each run's accuracy on its training rows before training). Each ensemble is written as
``<out>/<task>/<split>/results.json`` (``heldout/acc``, ``val/acc``, the members and their own accuracies), which
``scripts/heldout_table.py`` reads like any run.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from datamodules.runs.build import instantiate_with
from datamodules.runs.predictor import Predictor
from datamodules.runs.provenance import machine, source_commit
from datamodules.runs.results import RESULTS_FILE, RunFolder, RunResults
from datamodules.teachers.ensemble import WEIGHTINGS

# The data keys that fix which rows are dev and held-out: members must agree on them.
ROW_KEYS = ("task", "split", "seed", "heldout_max", "data_dir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="one folder of runs per member")
    parser.add_argument("--out", type=Path, required=True, help="where the ensembles' results.json files go")
    parser.add_argument("--weighting", choices=[w for w in WEIGHTINGS if w != "dev_acc"], default="uniform")
    return parser.parse_args(argv)


def members_by_run(folders: list[Path]) -> dict[tuple[str, str], list[Path]]:
    """(task, split) -> the run folder of each member folder that ran it, in the folders' order."""
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for folder in folders:
        for results_file in sorted(folder.rglob(RESULTS_FILE)):
            results = RunFolder(results_file.parent).results
            groups[(str(results.task), str(results.split))].append(results_file.parent)
    return dict(groups)


def ensemble_log_probs(log_probs: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """[N, C]: log of the weighted mean of the members' class distributions."""
    w = torch.tensor(weights, dtype=torch.float32)
    stacked = torch.stack(log_probs) + torch.log(w / w.sum()).view(-1, 1, 1)
    return torch.logsumexp(stacked, dim=0)


def accuracy(log_probs: torch.Tensor, rows) -> float:
    labels = torch.tensor([row.label for row in rows])
    return round(float((log_probs.argmax(-1) == labels).float().mean()), 4)


def score_ensemble(runs: list[Path], weighting: str) -> RunResults:
    predictors = [Predictor.load(run) for run in runs]
    first = predictors[0].cfg.data
    for run, predictor in zip(runs[1:], predictors[1:]):
        differ = [k for k in ROW_KEYS if str(predictor.cfg.data.get(k)) != str(first.get(k))]
        if differ:
            raise SystemExit(f"{run}: data.{differ[0]}={predictor.cfg.data.get(differ[0])}, where {runs[0]} has "
                             f"{first.get(differ[0])}; an ensemble's members must score the same rows")
    data = instantiate_with(first)
    data.prepare_data()
    data.setup("fit")
    reported = [RunFolder(run).results.to_dict() for run in runs]
    weights = [1.0] * len(runs) if weighting == "uniform" else [float(r["train/acc_before"]) for r in reported]
    out = RunResults(stage="ensemble", task=str(reported[0]["task"]), split=str(reported[0]["split"]),
                     seed=reported[0].get("seed"), model=reported[0].get("model"), commit=source_commit(),
                     machine=machine())
    members = []
    for name, rows in (("val", data.val_rows), ("heldout", data.heldout_rows)):
        log_probs = [predictor.class_log_probs(rows) for predictor in predictors]
        acc = accuracy(ensemble_log_probs(log_probs, weights), rows)
        setattr(out, f"{name}_acc", acc)
        members.append([accuracy(lp, rows) for lp in log_probs])
    out.extras.update({
        "ensemble/members": [str(run.resolve()) for run in runs],  # written relative to the ensemble's folder
        "ensemble/weighting": weighting,
        "ensemble/weights": [round(w, 4) for w in weights],
        "ensemble/member_val_acc": members[0],
        "ensemble/member_heldout_acc": members[1],
        "data/heldout_rows": len(data.heldout_rows),
    })
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    groups = members_by_run(args.folders)
    incomplete = sorted(key for key, runs in groups.items() if len(runs) < len(args.folders))
    for task, split in incomplete:
        print(f"{task} {split}: left out, {len(groups[(task, split)])} of {len(args.folders)} members ran it")
    for key in sorted(set(groups) - set(incomplete)):
        results = score_ensemble(groups[key], args.weighting)
        written = results.write(args.out / key[0] / key[1])
        print(json.dumps({"task": key[0], "split": key[1], "heldout/acc": results.heldout_acc,
                          "members": results.extras["ensemble/member_heldout_acc"], "file": str(written)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
