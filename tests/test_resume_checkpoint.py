"""last.ckpt (the resume state) is written at the end of an epoch at most every min_interval_s seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from callbacks.resume_checkpoint import ResumeCheckpoint
from datamodules.errors import ConfigError
from train import build, run


@pytest.mark.parametrize(("interval", "written"), [(0, True), (3600, False)])
def test_last_ckpt_waits_for_its_interval(make_config, interval, written):
    cfg = make_config(["trainer.max_epochs=2", f"callbacks.last_checkpoint.min_interval_s={interval}"])
    run(build(cfg))
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert last.is_file() == written
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt").is_file()  # selection never waits
    if written:
        state = torch.load(last, weights_only=False)
        assert state["global_step"] == 4 and state["optimizer_states"]  # the end of epoch 2: all a resume needs


def test_a_negative_interval_names_the_key():
    with pytest.raises(ConfigError, match=r"callbacks.last_checkpoint.min_interval_s=-1; allowed: a number >= 0"):
        ResumeCheckpoint(-1, "x", "last", None, 1, False, False)
