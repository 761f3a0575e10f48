"""Fuzzy-PET's training step, eager against ``model.compile=true`` (``torch.compile`` per transformer layer).

    python benchmarks/compile_step.py --task iflytek --steps 12 --threads 1

Two copies of the stage module on the shared encoder (``$ZH_MLM_SMALL``) with the same weights, one built with
``model.compile=true``, take turns on the same batches of ``train_<split>.json`` (``data.batch_size`` rows; the stage's
loss, forward and backward under bf16 autocast as ``precision=bf16-mixed`` trains, no optimizer step); who goes
first alternates. The first ``--warmup`` steps of each (the compiled side compiles there) are dropped; printed: each
step's seconds, then one JSON object with the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="iflytek")
    parser.add_argument("--split", default="0")
    parser.add_argument("--steps", type=int, default=12, help="steps per side, warm-up included")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--pretrained", default=os.environ.get("ZH_MLM_SMALL", str(ROOT.parent / "shared/encoders/zh-mlm-small")))
    parser.add_argument("--data-dir", default=os.environ.get("FEWCLUE_DIR", str(ROOT.parent / "shared/fewclue")))
    return parser.parse_args(argv)


def build_module(args, compile_: bool, work: Path):
    from datamodules.runs.saved_config import compose_train_config
    from train import build

    cfg = compose_train_config([f"task={args.task}", "stage=fuzzy_pet", "model=hf", f"model.pretrained={args.pretrained}",
                                f"model.compile={str(compile_).lower()}", f"data.data_dir={args.data_dir}",
                                f"data.split={args.split}", "logger=none", "callbacks=none", "~tuned",
                                f"paths.output_dir={work / 'run'}", f"paths.cache_dir={work / 'cache'}"])
    built = build(cfg)
    return built.module, built.datamodule, int(cfg.data.batch_size)


def train_step(module, batch: dict) -> float:
    module.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.step(batch).losses["cloze"]
    loss.backward()
    module.zero_grad(set_to_none=True)
    return float(loss)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        eager, datamodule, batch_size = build_module(args, False, Path(work))
        compiled, _, _ = build_module(args, True, Path(work))
        compiled.load_state_dict(eager.state_dict())
        rows = list(datamodule.train_rows)
        random.Random(0).shuffle(rows)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for step in range(args.steps):
            chunk = rows[(step * batch_size) % max(1, len(rows) - batch_size + 1):][:batch_size]
            batch = eager.collate(chunk)
            sides = [("eager", eager), ("compiled", compiled)]
            for name, module in sides if step % 2 else sides[::-1]:
                started = time.perf_counter()
                train_step(module, batch)
                seconds = time.perf_counter() - started
                if step >= args.warmup:
                    times[name].append(seconds)
                print(f"step {step} {name}: {seconds:.2f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    summary = {"task": args.task, "threads": torch.get_num_threads(), "steps": len(times["eager"]),
               "eager_s": round(medians["eager"], 3), "compiled_s": round(medians["compiled"], 3),
               "speedup": round(medians["eager"] / medians["compiled"], 3), "torch": torch.__version__}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
