"""Leaderboard rows in FewCLUE's official format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datamodules.tasks.task_spec import TaskSpec


def submission_rows(task: TaskSpec, ids: Sequence[Any], class_indices: Sequence[int]) -> list[dict]:
    """``{"id", "label"}`` per row (``{"id", "answer"}`` for chid); ids keep their type from test.json."""
    key = "answer" if task.kind == "multiple_choice" else "label"
    return [{"id": row_id, key: task.official_label(int(c))} for row_id, c in zip(ids, class_indices)]
