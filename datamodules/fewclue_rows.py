"""Reading FewCLUE JSON-lines files into validated rows.

Every problem is reported with the file, the line and the field, and no row is ever skipped:
a file with errors stops the run before anything is trained.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.task_spec import TaskSpec
from errors import DataError

MAX_REPORTED_ERRORS = 20


@dataclass
class Row:
    """One example: its id as written in the file, its text fields and its class index."""

    id: Any
    fields: dict[str, Any]
    label: int | None
    path: str
    line: int


def _text(value: Any) -> str:
    # csl's keyword field is a list of keywords.
    if isinstance(value, list):
        return "，".join(str(v) for v in value)
    return str(value)


def _parse_row(task: TaskSpec, raw: dict, path: Path, line: int, labelled: bool) -> Row:
    where = f"{path}:{line}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    id_field = next((f for f in task.id_fields if f in raw), None)
    if id_field is None:
        raise DataError(f"{where}: missing field {task.id_fields[0]!r} (the row id); row has {sorted(raw)}")
    row_id = raw[id_field]
    if isinstance(row_id, bool) or not isinstance(row_id, (int, str)):
        raise DataError(f"{where}: field {id_field!r}: the row id must be an integer or a string, got {row_id!r}")
    fields: dict[str, Any] = {}
    for name in task.text_fields:
        if name not in raw:
            raise DataError(f"{where}: missing field {name!r}; row has {sorted(raw)}")
        fields[name] = _text(raw[name])
    if task.kind == "span_pair":
        target = raw.get("target")
        if not isinstance(target, dict):
            raise DataError(f"{where}: missing field 'target' (span1/span2 of the pronoun pair)")
        for key in ("span1_text", "span1_index", "span2_text", "span2_index"):
            if key not in target:
                raise DataError(f"{where}: missing field 'target.{key}'")
        fields["span1"] = str(target["span1_text"])
        fields["span2"] = str(target["span2_text"])
        fields["span1_index"] = int(target["span1_index"])
        fields["span2_index"] = int(target["span2_index"])
    if task.kind == "multiple_choice":
        candidates = raw.get(task.candidates_field)
        if not isinstance(candidates, list) or len(candidates) != task.num_choices:
            raise DataError(
                f"{where}: field {task.candidates_field!r} must be a list of {task.num_choices} candidates"
            )
        text = fields[task.text_fields[0]]
        if text.count(task.mask_marker) != 1:
            raise DataError(f"{where}: field {task.text_fields[0]!r} must hold {task.mask_marker!r} exactly once")
        fields["candidates"] = [str(c) for c in candidates]
        fields["left"], fields["right"] = text.split(task.mask_marker)
    label = None
    if labelled:
        if task.label_field not in raw:
            raise DataError(f"{where}: missing field {task.label_field!r}; row has {sorted(raw)}")
        label = _class_index(task, raw[task.label_field], where)
    return Row(id=row_id, fields=fields, label=label, path=str(path), line=line)


def _class_index(task: TaskSpec, value: Any, where: str) -> int:
    if task.kind == "multiple_choice":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < task.num_choices:
            raise DataError(
                f"{where}: field {task.label_field!r}: unknown label {value!r}; allowed: 0..{task.num_choices - 1}"
            )
        return value
    key = str(value).lower() if isinstance(value, bool) else str(value)
    if key not in task.labels:
        raise DataError(
            f"{where}: field {task.label_field!r}: unknown label {value!r} for task {task.name}; "
            f"allowed: {task.label_list}"
        )
    return task.label_list.index(key)


def read_rows(task: TaskSpec, path: Path, labelled: bool, allow_empty: bool = False) -> list[Row]:
    """All rows of one JSON-lines file; raises DataError listing every bad line (up to 20).

    The file must be UTF-8 (a leading BOM is allowed) and ids must be unique within it: every real
    FewCLUE file, unlabeled.json included, has an id on each row and no id twice.
    """
    path = Path(path)
    rows: list[Row] = []
    errors: list[str] = []
    first_line_of: dict[Any, int] = {}
    # Bytes, decoded line by line, so that an encoding error names its line.
    lines = path.read_bytes().removeprefix(codecs.BOM_UTF8).splitlines()
    for line_number, data in enumerate(lines, start=1):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            errors.append(
                f"{path}:{line_number}: not UTF-8 text (byte 0x{data[err.start]:02x} at byte {err.start + 1} "
                f"of the line: {err.reason}); the file must be UTF-8"
            )
            break  # the whole file is most likely in another encoding: one line says it
        if not text.strip():
            continue
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            errors.append(f"{path}:{line_number}: malformed JSON ({err.msg} at column {err.colno})")
            continue
        try:
            row = _parse_row(task, raw, path, line_number, labelled)
        except DataError as err:
            errors.append(str(err))
        else:
            first = first_line_of.setdefault(row.id, line_number)
            if first != line_number:
                errors.append(f"{path}:{line_number}: duplicate id {row.id!r} (first on line {first})")
            rows.append(row)
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
    if errors:
        more = " (stopped at the first 20)" if len(errors) >= MAX_REPORTED_ERRORS else ""
        raise DataError(f"{len(errors)} bad row(s) in {path}{more}:\n  " + "\n  ".join(errors))
    if not rows and not allow_empty:
        raise DataError(f"{path}: the file has no rows; a split must not be empty")
    return rows
