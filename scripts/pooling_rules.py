"""How a pooled Fuzzy-PET run would score under other ways of pooling its label-word sets, with the same weights.

    python scripts/pooling_rules.py runs/pool/eprstmt/0 runs/pool/bustm/0 ... [--out pooling.json]

Each run must be a finished Fuzzy-PET run over two or more label-word sets that kept its checkpoint. Its word scores
(``stage.word_score``) are computed once on the dev rows and the held-out rows with the selected checkpoint, and on
the training rows with the starting weights; every rule below then pools the same scores:

- ``words``: every word of a class summed, p(class) ∝ Σ p(word) (``stage.pooling=words``);
- ``sets``: the mean of each set's own class distribution (``stage.pooling=sets``);
- ``log_sets``: the mean of each set's class log-probabilities (a product of the sets' distributions);
- ``pet``: the sets' log-probabilities weighted by each set's accuracy on the training rows before training (PET's
  ensemble weights: no dev row involved);
- ``dev_best``: the one set best on dev (ties: the first in the task's order);
- ``<set>``: one set's words alone.

The table gives dev and held-out accuracy per run and rule, and the mean over runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from datamodules.runs.build import instantiate_with
from datamodules.runs.predictor import Predictor
from lightning_modules.scoring.verbalizer import pooled_class_log_probs

RULES = ("words", "sets", "log_sets", "pet", "dev_best")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished Fuzzy-PET run folders")
    parser.add_argument("--out", type=Path, help="write every run's accuracies as JSON here")
    return parser.parse_args(argv)


def set_log_probs(module, scores: torch.Tensor) -> torch.Tensor:
    """[S, N, C]: every set's own class distribution."""
    return torch.stack([module.set_log_probs(scores, s) for s in range(len(module.set_names))])


def accuracy(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    return round(float((log_probs.argmax(-1) == labels).float().mean()), 4)


def rule_log_probs(module, scores: torch.Tensor, set_weights: torch.Tensor, best_set: int) -> dict[str, torch.Tensor]:
    per_set = set_log_probs(module, scores)
    args = (module.word_classes, module.word_sets, module.task.num_classes, module.aggregation)
    weights = set_weights / set_weights.sum()
    rules = {
        "words": pooled_class_log_probs(scores, *args, pooling="words"),
        "sets": pooled_class_log_probs(scores, *args, pooling="sets"),
        "log_sets": per_set.mean(0),
        "pet": (weights.view(-1, 1, 1) * per_set).sum(0),
        "dev_best": per_set[best_set],
    }
    rules.update({name: per_set[s] for s, name in enumerate(module.set_names)})
    return rules


def analyse(run_dir: Path) -> dict:
    trained = Predictor.load(run_dir)
    cfg = trained.cfg
    data = instantiate_with(cfg.data)
    data.prepare_data()
    data.setup("fit")
    module = trained.module
    if len(module.set_names) < 2:
        raise SystemExit(f"{run_dir}: pools {module.set_names}; give runs over two or more label-word sets")
    scored = {name: (trained.scores(rows, module.word_scores), torch.tensor([row.label for row in rows]))
              for name, rows in (("dev", data.val_rows), ("heldout", data.heldout_rows))}
    initial = Predictor.load(run_dir, starting_weights=True)
    train_labels = torch.tensor([row.label for row in data.train_rows])
    before = set_log_probs(initial.module, initial.scores(data.train_rows, initial.module.word_scores))
    set_weights = torch.tensor([(lp.argmax(-1) == train_labels).float().mean() for lp in before])
    dev_scores, dev_labels = scored["dev"]
    dev_acc = [accuracy(lp, dev_labels) for lp in set_log_probs(module, dev_scores)]
    best_set = max(range(len(dev_acc)), key=lambda s: (dev_acc[s], -s))
    out = {"run": str(run_dir), "task": trained.task.name, "split": str(cfg.data.split),
           "set_weights": dict(zip(module.set_names, [round(float(w), 4) for w in set_weights])),
           "dev_best": module.set_names[best_set]}
    for name, (scores, labels) in scored.items():
        out[name] = {rule: accuracy(lp, labels) for rule, lp in rule_log_probs(module, scores, set_weights, best_set).items()}
    return out


def table(results: list[dict]) -> str:
    rules = [*RULES, *[name for name in results[0]["heldout"] if name not in RULES]]
    lines = ["| run | " + " | ".join(rules) + " |", "|---" * (len(rules) + 1) + "|"]
    for r in results:
        cells = [f"{100 * r['heldout'][rule]:.1f} [{100 * r['dev'][rule]:.1f}]" if rule in r["heldout"] else "-"
                 for rule in rules]
        lines.append(f"| {r['task']} {r['split']} | " + " | ".join(cells) + " |")
    means = [sum(100 * r["heldout"].get(rule, float("nan")) for r in results) / len(results) for rule in rules]
    lines.append("| **mean** | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = [analyse(run) for run in args.runs]
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print("held-out accuracy (%) per pooling rule, [dev]")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
