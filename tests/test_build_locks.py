"""A C++ extension build killed mid-way leaves a lock that would hang every later DeepSpeed run."""

from __future__ import annotations

import logging
import os
import time

from lightning_modules.scale import build_locks
from lightning_modules.scale.build_locks import lock_is_held, remove_stale_build_locks


def make_lock(folder, age_s: float):
    folder.mkdir(parents=True)
    lock = folder / "lock"
    lock.touch()
    stamp = time.time() - age_s
    os.utime(lock, (stamp, stamp))
    return lock


def test_an_unheld_old_lock_is_removed_with_a_warning_naming_it(tmp_path, caplog):
    left_over = make_lock(tmp_path / "py311_cpu" / "cpu_adam", age_s=600)
    with caplog.at_level(logging.WARNING):
        assert remove_stale_build_locks(tmp_path) == [left_over]
    assert not left_over.exists()
    assert str(left_over) in caplog.text and "10 minutes" in caplog.text


def test_a_lock_a_process_holds_open_is_kept_however_old(tmp_path):
    building = make_lock(tmp_path / "cpu_adam", age_s=7200)  # TORCH_EXTENSIONS_DIR layout: no python folder
    descriptor = os.open(building, os.O_RDONLY)  # what torch's FileBaton keeps open while it builds
    try:
        assert lock_is_held(building) is True
        assert remove_stale_build_locks(tmp_path) == []
        assert building.exists()
    finally:
        os.close(descriptor)
    assert lock_is_held(building) is False
    assert remove_stale_build_locks(tmp_path) == [building]


def test_a_fresh_lock_is_kept_while_its_build_may_be_starting(tmp_path):
    fresh = make_lock(tmp_path / "py311_cpu" / "deepspeed_shm_comm", age_s=60)
    assert remove_stale_build_locks(tmp_path) == []
    assert fresh.exists()


def test_where_holders_cannot_be_listed_only_a_lock_older_than_an_hour_goes(tmp_path, monkeypatch):
    monkeypatch.setattr(build_locks, "lock_is_held", lambda lock: None)
    recent = make_lock(tmp_path / "py311_cpu" / "cpu_adam", age_s=1800)
    old = make_lock(tmp_path / "py311_cpu" / "deepspeed_shm_comm", age_s=4000)
    assert remove_stale_build_locks(tmp_path) == [old]
    assert recent.exists() and not old.exists()


def test_the_root_follows_torch_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert build_locks.extensions_root() == tmp_path
