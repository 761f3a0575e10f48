"""Zero-shot dev accuracy of every stage.word_score x stage.pooling, from one scoring pass per task.

    python -m scripts.zero_shot_table --tasks eprstmt csldcp --split 0 --pretrained ../shared/encoders/zh-mlm-small

(from the repository root: it builds each run with train.py's ``build``).

The untrained cloze (``stage=fuzzy_pet trainer.max_epochs=0``) is scored once per task (joint word
scores and the content-free prior), then every combination is evaluated on the same numbers. Prints a
markdown table: accuracy (%) per combination, and for each task how many classes the predictions
reach under sum/words (today's scoring) and under the task's best combination.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from datamodules.runs.saved_config import compose_train_config
from datamodules.tasks.task_configs import FEWCLUE_TASKS
from lightning_modules.scoring.verbalizer import POOLINGS, WORD_SCORES
from train import build

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def scored(module, rows, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint word scores [N, W], the content-free prior ([W], or [N, W] for chid) and the words' lengths [W]."""
    module.eval()
    joint, priors = [], []
    for start in range(0, len(rows), batch_size):
        batch = module.collate(rows[start : start + batch_size])
        joint.append(module.joint_scores(batch))
        priors.append(module.content_free_scores(batch))
    prior = torch.cat(priors) if module.multiple_choice else priors[0]
    return torch.cat(joint), prior, module.slot_counts(batch)


def evaluate(module, joint, prior, lengths, word_score: str, pooling: str) -> torch.Tensor:
    """Predicted classes under one combination: the module's own adjustment and pooling, switched."""
    module.word_score, module.pooling = word_score, pooling
    return module.pooled(module.adjusted(joint, prior, lengths)).argmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(FEWCLUE_TASKS))
    parser.add_argument("--split", default="0")
    parser.add_argument("--pretrained", default=os.environ.get("ZH_MLM_SMALL", str(ROOT.parent / "shared/encoders/zh-mlm-small")))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="outputs/zero_shot")
    args = parser.parse_args()
    combos = [(w, p) for w in WORD_SCORES for p in POOLINGS]
    print("| task | rows | " + " | ".join(f"{w}/{p}" for w, p in combos) + " | classes reached (sum/words → best) | seconds |")
    print("|---" * (len(combos) + 4) + "|")
    for task in args.tasks:
        started = time.perf_counter()
        out = Path(args.out)
        cfg = compose_train_config([f"task={task}", "stage=fuzzy_pet", "model=hf", f"model.pretrained={args.pretrained}",
                                    f"data.split={args.split}", "logger=none", "callbacks=none", "~tuned",
                                    f"paths.output_dir={out / task}", f"paths.cache_dir={out / 'cache'}"])
        built = build(cfg)
        module, rows = built.module, built.datamodule.val_rows
        labels = torch.tensor([row.label for row in rows])
        joint, prior, lengths = scored(module, rows, args.batch_size)
        accuracy, reached = {}, {}
        for word_score, pooling in combos:
            predicted = evaluate(module, joint, prior, lengths, word_score, pooling)
            accuracy[word_score, pooling] = 100 * (predicted == labels).float().mean().item()
            reached[word_score, pooling] = len(set(predicted.tolist()))
        best = max(combos, key=lambda c: accuracy[c])
        cells = " | ".join(f"{accuracy[c]:.1f}" for c in combos)
        spread = f"{reached['sum', 'words']} → {reached[best]} of {module.task.num_classes}"
        print(f"| {task} | {len(rows)} | {cells} | {spread} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
