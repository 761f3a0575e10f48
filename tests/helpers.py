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


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in a subprocess, as a user types it."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
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
