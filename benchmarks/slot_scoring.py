"""Fuzzy-PET's label-word scoring, timed: exact in one pass vs one pass per word length vs ``stage.slots=longest``.

    python benchmarks/slot_scoring.py                                  # tnews and csldcp, split 0: ~15 min on 2 CPU cores
    python benchmarks/slot_scoring.py --tasks iflytek --repeats 9 --out slot_scoring.json

Three ways to score a batch with the shared encoder (``$ZH_MLM_SMALL``), on the same weights and FewCLUE rows
(``$FEWCLUE_DIR``):

* ``separate``: exact, one encoder pass per distinct word length (``PatternEncoder.encode``, one input per length);
* ``one_pass``: exact, every length's copy of the rows stacked into one pass (``encode_stacked``: what the stage runs);
* ``longest``: one pass with the longest word's slots, a shorter word scored at the first ones (inexact).

Timed, each in one process with the three interleaved in a shuffled order per repetition (the machine's load
hits all three alike): a training step (``--train-batch`` rows of ``train_<split>.json``: the stage's loss,
forward and backward, no optimizer step) and an evaluation batch (``--eval-batch`` rows of ``dev_<split>.json``:
class log-probs under no_grad) in float32 and with bf16 weights (every floating tensor cast with
``tensor.data.to(torch.bfloat16)``, as ``callbacks/eval_precision.py`` does). Batches are collated before the
clock starts. Each repetition takes the next rows; the first repetition is a warm-up and is dropped.

Printed: the median seconds of each, the ratios of medians (one_pass / separate, one_pass / longest) and the
median of the paired per-repetition ratios; on the evaluation rows also how far one_pass is from separate (max
|Δ class log-prob|, argmax agreement) and how often longest predicts what exact predicts. The last line is one
JSON object with all of it, the machine (CPU model, threads), the torch version and the commit (and whether
the scoring code differs from it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F

from datamodules.runs import provenance

VARIANTS = ("separate", "one_pass", "longest")
PHASES = ("train", "eval_fp32", "eval_bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["tnews", "csldcp"])
    parser.add_argument("--split", default="0")
    parser.add_argument("--pretrained", default=os.environ.get("ZH_MLM_SMALL", str(ROOT.parent / "shared/encoders/zh-mlm-small")))
    parser.add_argument("--data-dir", default=os.environ.get("FEWCLUE_DIR", str(ROOT.parent / "shared/fewclue")))
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (after one warm-up)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON object here")
    return parser.parse_args(argv)


# -- the three ways to score -----------------------------------------------------------------------
def collated(module, rows, variant: str) -> dict:
    """The batch ``variant`` scores: the stage's own collate (one stacked input), or one input per length."""
    with slots(module, "longest" if variant == "longest" else "exact"):
        batch = module.collate(rows)
    if variant == "separate":
        batch["separate"] = module.pattern_encoder.encode([row.fields for row in rows], module.lengths)
    return batch


@contextlib.contextmanager
def slots(module, value: str):
    saved, module.slots = module.slots, value
    try:
        yield
    finally:
        module.slots = saved


def word_scores(module, batch: dict, variant: str) -> torch.Tensor:
    """[B, W] word scores of the stage's ``word_score`` under ``variant``."""
    if variant != "separate":
        with slots(module, "longest" if variant == "longest" else "exact"):
            return module.word_scores(batch)
    # One forward pass per word length, each on its own input (the scoring the stage ran before encode_stacked).
    parts = [module._score(module(**batch["separate"][n]), module.group_ids[n]) for n in module.lengths]
    prior = None
    if module.word_score == "calibrated" or module.word_score == "calibrated_initial":
        empty = module.pattern_encoder.encode([module._empty_fields()], module.lengths)
        with torch.no_grad():
            prior = torch.cat([module._score(module(**empty[n]), module.group_ids[n]) for n in module.lengths], -1)[0]
    return module.adjusted(torch.cat(parts, -1), prior, module.word_lengths)


def training_loss(module, batch: dict, variant: str) -> torch.Tensor:
    """The stage's training objective (``stage.objective``) on ``batch``."""
    scores = word_scores(module, batch, variant)
    if module.objective == "per_set":
        return module.mean_set_loss(scores, batch["labels"])
    return F.nll_loss(module.pooled(scores), batch["labels"])


def train_step(module, batch: dict, variant: str) -> None:
    module.train()
    module._prior = None
    training_loss(module, batch, variant).backward()
    module.zero_grad(set_to_none=True)


@torch.no_grad()
def eval_batch(module, batch: dict, variant: str) -> torch.Tensor:
    module.eval()
    module._prior = None
    return module.pooled(word_scores(module, batch, variant)).float()


@contextlib.contextmanager
def bf16_weights(module):
    """Every floating parameter and buffer cast to bf16 (as callbacks/eval_precision.py does), then restored."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()}
    saved = {key: t.data for key, t in tensors.items()}
    for t in tensors.values():
        t.data = t.data.to(torch.bfloat16)
    try:
        yield
    finally:
        for key, t in tensors.items():
            t.data = saved[key]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# -- one task --------------------------------------------------------------------------------------
def build_module(task: str, args, work: Path):
    from datamodules.runs.saved_config import compose_train_config
    from train import build

    cfg = compose_train_config([f"task={task}", "stage=fuzzy_pet", "model=hf", f"model.pretrained={args.pretrained}",
                                f"data.data_dir={args.data_dir}", f"data.split={args.split}", "logger=none", "callbacks=none", "~tuned",
                                f"paths.output_dir={work / task}", f"paths.cache_dir={work / 'cache'}"])
    built = build(cfg)
    return built.module, built.datamodule


def measure(task: str, args, work: Path) -> dict:
    module, datamodule = build_module(task, args, work)
    rng = random.Random(args.seed)
    train_rows, eval_rows = list(datamodule.train_rows), list(datamodule.val_rows)
    rng.shuffle(train_rows)
    rng.shuffle(eval_rows)

    def chunk(rows, size, r):
        start = (r * size) % max(1, len(rows) - size + 1)
        return rows[start : start + size]

    times = {phase: {v: [] for v in VARIANTS} for phase in PHASES}
    agreement = {"max_abs_diff_fp32": 0.0, "max_abs_diff_bf16": 0.0, "argmax_same_fp32": 0, "argmax_same_bf16": 0,
                 "longest_same_as_exact_fp32": 0, "rows": 0}
    for r in range(args.repeats + 1):
        train_batches = {v: collated(module, chunk(train_rows, args.train_batch, r), v) for v in VARIANTS}
        eval_rows_r = chunk(eval_rows, args.eval_batch, r)
        eval_batches = {v: collated(module, eval_rows_r, v) for v in VARIANTS}
        outputs = {}
        for phase in PHASES:
            order = list(VARIANTS)
            rng.shuffle(order)
            for v in order:
                if phase == "train":
                    seconds = timed(lambda: train_step(module, train_batches[v], v))
                elif phase == "eval_fp32":
                    seconds = timed(lambda: outputs.__setitem__((phase, v), eval_batch(module, eval_batches[v], v)))
                else:
                    with bf16_weights(module):
                        seconds = timed(lambda: outputs.__setitem__((phase, v), eval_batch(module, eval_batches[v], v)))
                if r > 0:
                    times[phase][v].append(seconds)
        if r == 0:
            continue
        for precision in ("fp32", "bf16"):
            old, new = outputs[f"eval_{precision}", "separate"], outputs[f"eval_{precision}", "one_pass"]
            agreement[f"max_abs_diff_{precision}"] = max(agreement[f"max_abs_diff_{precision}"], (old - new).abs().max().item())
            agreement[f"argmax_same_{precision}"] += int((old.argmax(-1) == new.argmax(-1)).sum())
        agreement["longest_same_as_exact_fp32"] += int(
            (outputs["eval_fp32", "longest"].argmax(-1) == outputs["eval_fp32", "one_pass"].argmax(-1)).sum())
        agreement["rows"] += len(eval_rows_r)
        print(f"{task} repetition {r}: " + ", ".join(f"{p}/{v} {times[p][v][-1]:.3f}s" for p in PHASES for v in VARIANTS),
              flush=True)

    summary = {}
    for phase in PHASES:
        median = {v: statistics.median(times[phase][v]) for v in VARIANTS}
        paired = lambda a, b: statistics.median(x / y for x, y in zip(times[phase][a], times[phase][b]))
        summary[phase] = {
            "median_s": median,
            "one_pass/separate": median["one_pass"] / median["separate"],
            "one_pass/longest": median["one_pass"] / median["longest"],
            "separate/longest": median["separate"] / median["longest"],
            "paired_one_pass/separate": paired("one_pass", "separate"),
            "paired_one_pass/longest": paired("one_pass", "longest"),
            "seconds": times[phase],
        }
    return {"task": task, "lengths": module.lengths, "train_batch": args.train_batch, "eval_batch": args.eval_batch,
            "repeats": args.repeats, "timing": summary, "agreement": agreement}


def machine() -> dict:
    scoring = ["lightning_modules/stages/fuzzy_pet.py", "lightning_modules/scoring", "benchmarks/slot_scoring.py"]
    changed = subprocess.run(["git", "status", "--porcelain", "--", *scoring], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    return {"machine": provenance.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "commit": provenance.source_commit(), "scoring_changed_since_commit": bool(changed),
            "date": datetime.date.today().isoformat()}


def table(result: dict) -> list[str]:
    lines = [f"{result['task']} (word lengths {result['lengths']}; {result['repeats']} repetitions):",
             "| phase | separate s | one_pass s | longest s | one_pass / separate | one_pass / longest | paired one_pass / longest |",
             "|---|---|---|---|---|---|---|"]
    for phase, t in result["timing"].items():
        m = t["median_s"]
        lines.append(f"| {phase} | {m['separate']:.3f} | {m['one_pass']:.3f} | {m['longest']:.3f} | "
                     f"{t['one_pass/separate']:.2f} | {t['one_pass/longest']:.2f} | {t['paired_one_pass/longest']:.2f} |")
    a = result["agreement"]
    lines.append(f"one_pass vs separate on {a['rows']} eval rows: max |Δ log p| fp32 {a['max_abs_diff_fp32']:.2e}, "
                 f"bf16 {a['max_abs_diff_bf16']:.2e}; same argmax fp32 {a['argmax_same_fp32']}/{a['rows']}, "
                 f"bf16 {a['argmax_same_bf16']}/{a['rows']}; longest predicts as exact on "
                 f"{a['longest_same_as_exact_fp32']}/{a['rows']}")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    results = []
    with tempfile.TemporaryDirectory() as work:
        for task in args.tasks:
            results.append(measure(task, args, Path(work)))
            print("\n".join(table(results[-1])), flush=True)
    report = {"machine": machine(), "command": "python benchmarks/slot_scoring.py " + " ".join(argv or sys.argv[1:]),
              "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
