"""Small helpers shared by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


# The tests' own defaults: a tiny model from scratch and the fine-tuning stage (fast, no checkpoint needed), and
# no conf/tuned/ settings (chosen for the shared encoder; tests/test_tuned.py and the quickstart test cover them),
# float32 training (precision=auto trains in bf16 only on CPUs with bf16 units: the tests' numbers stay the same on
# every machine; tests/test_precision.py and the quickstart test cover auto).
# train.py's defaults are the users' (the shared encoder and Fuzzy-PET); a test naming model=, stage=, tuned or
# experiment= gets what it names.
TEST_DEFAULTS = {"model": "model=tiny", "stage": "stage=finetune", "tuned": "~tuned", "precision": "precision=32-true"}
RANK_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK")


def with_test_defaults(overrides: list[str]) -> list[str]:
    if any(o.startswith("experiment=") for o in overrides):
        return list(overrides)
    named = {o.lstrip("+~").split("=")[0] for o in overrides}
    return [*overrides, *(value for key, value in TEST_DEFAULTS.items() if key not in named)]


def cli_environment(env: dict | None = None) -> dict:
    """The environment of a child process that runs the project's CLI. Rank variables that in-process DDP/DeepSpeed
    tests left in this process's environment are not passed on: a child would try to listen on a MASTER_PORT that
    the test process's process group still holds."""
    inherited = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    return {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 1800,
            test_defaults: bool = True) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in a subprocess, as a user types it (plus ``TEST_DEFAULTS`` unless told not to)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *(with_test_defaults(args) if test_defaults else args)],
        cwd=cwd, env=cli_environment(env), capture_output=True, text=True, timeout=timeout,
    )


class FailAfterFirstStep:
    """A callback that breaks training after one step, to test what a failed run leaves behind."""

    def __new__(cls):
        from lightning.pytorch.callbacks import Callback

        class _Fail(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                raise RuntimeError("boom: simulated failure after the first step")

        return _Fail()


def stage_module(stage: str, masked_lm, tokenizer, run_dir: Path, *overrides: str):
    """``stage=<stage>`` as train.py builds it from conf/, on a given masked LM and tokenizer."""
    from tests.conftest import compose_config
    from train import instantiate_with

    cfg = compose_config([f"stage={stage}", *overrides], run_dir)
    return instantiate_with(cfg.stage, masked_lm=masked_lm, tokenizer=tokenizer)


def tiny_bert(run_dir: Path, *overrides: str):
    """``model=tiny`` as train.py builds it from conf/, with overrides (``model.hidden_size=32``, ...)."""
    from tests.conftest import compose_config
    from train import instantiate_with

    return instantiate_with(compose_config(["model=tiny", *overrides], run_dir).model)


def write_reviews(folder: Path, counts: dict[str, int], flipped: tuple[str, ...] = (), seed: int = 0) -> dict[str, Path]:
    """csv files of examples/my_task's task (``reviews``: rid, review, rating) that a tiny model learns in a few
    epochs: a good row holds 很好 and a bad one 很差 amid random characters, classes alternating. ``counts``: rows
    per file name (``{"train": 64, "dev": 16}``); the rows whose id is in ``flipped`` carry the other label (test rows
    no model gets right). Returns the file of each name."""
    import csv
    import random

    rng = random.Random(seed)
    filler = "今天我们的店里东西价格服务味道环境房间快递包装质量"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, count in counts.items():
        paths[name] = folder / f"{name}.csv"
        with paths[name].open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["rid", "review", "rating"])
            for i in range(count):
                label = ("good", "bad")[i % 2]
                words = "".join(rng.choice(filler) for _ in range(rng.randint(3, 8)))
                text = words[:2] + ("很好" if label == "good" else "很差") + words[2:]
                row_id = f"{name}{i}"
                if row_id in flipped:
                    label = "bad" if label == "good" else "good"
                writer.writerow([row_id, text, label])
    return paths
