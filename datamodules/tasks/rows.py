"""Reading task files into validated rows: FewCLUE's JSON lines, and a user's ``.jsonl``/``.csv``/``.tsv``.

Every problem is reported with the file, the line and the field, and no row is ever skipped:
a file with errors stops the run before anything is trained. The format follows the file's extension
(``.json``/``.jsonl``: JSON lines; ``.csv``: comma-separated with quoting; ``.tsv``: tab-separated, no
quoting); a csv/tsv file starts with a header row naming its columns, and its cells are text.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.tasks.task_spec import TaskSpec
from datamodules.errors import DataError

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20
FORMATS = {".json": "jsonl", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
# span_pair rows also carry {text_marked}: the text with the pronoun (span2) in these brackets.
SPAN_MARKS = ("【", "】")


@dataclass
class Row:
    """One example: its id as written in the file, its text fields and its class index."""

    id: Any
    fields: dict[str, Any]
    label: int | None
    path: str
    line: int
    # True when the row had no id and ``id`` is its line number (``read_rows(..., line_ids=True)``).
    id_from_line: bool = False


def _text(value: Any, name: str, where: str, is_list: bool = False) -> str:
    """A text field's value: a non-empty string; in a list field (``list_fields``), a list of strings, joined."""
    if is_list and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = "，".join(value)
    if not isinstance(value, str):
        shown = "null" if value is None else f"{type(value).__name__} {value!r}"[:80]
        raise DataError(f"{where}: field {name!r}: {shown}; a text (a string) is needed")
    if not value.strip():
        raise DataError(f"{where}: field {name!r}: an empty text")
    return value


def span_start(text: str, span: str, index: int) -> int:
    """Where ``span`` starts in ``text``: CLUEWSC's span indices are sometimes off by a few characters, so where the
    index does not hold the span, its nearest occurrence; ``index`` itself where the text lacks the span."""
    if text[index : index + len(span)] == span:
        return index
    starts = [i for i in range(len(text)) if text.startswith(span, i)]
    return min(starts, key=lambda i: abs(i - index)) if starts else index


def mark_span(text: str, span: str, index: int) -> str:
    """``text`` with ``span`` wrapped in SPAN_MARKS where it starts (``span_start``; unchanged where the text lacks
    it): which of several 他 the pronoun is, for a cloze that cannot see positions."""
    index = span_start(text, span, index)
    if not span or text[index : index + len(span)] != span:
        return text
    opening, closing = SPAN_MARKS
    return f"{text[:index]}{opening}{span}{closing}{text[index + len(span):]}"


def _parse_row(task: TaskSpec, raw: dict, path: Path, line: int, labelled: bool, line_ids: bool = False) -> Row:
    where = f"{path}:{line}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    id_field = next((f for f in task.id_fields if f in raw), None)
    if id_field is None and not line_ids:
        raise DataError(f"{where}: missing field {task.id_fields[0]!r} (the row id); row has {sorted(raw)}")
    row_id = line if id_field is None else raw[id_field]
    if isinstance(row_id, bool) or not isinstance(row_id, (int, str)):
        raise DataError(f"{where}: field {id_field!r}: the row id must be an integer or a string, got {row_id!r}")
    fields: dict[str, Any] = {}
    for name in task.text_fields:
        if name not in raw:
            raise DataError(f"{where}: missing field {name!r}; row has {sorted(raw)}")
        fields[name] = _text(raw[name], name, where, is_list=name in task.list_fields)
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
        fields["text_marked"] = mark_span(fields[task.text_fields[0]], fields["span2"], fields["span2_index"])
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
    return Row(id=row_id, fields=fields, label=label, path=str(path), line=line, id_from_line=id_field is None)


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


def file_format(path: str | Path) -> str:
    """``jsonl``, ``csv`` or ``tsv``, by the file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown file type {suffix or '(none)'!r}; allowed: {', '.join(FORMATS)}")
    return FORMATS[suffix]


def read_rows(
    task: TaskSpec,
    path: str | Path,
    labelled: bool,
    allow_empty: bool = False,
    line_ids: bool = False,
    data: bytes | None = None,
    fmt: str | None = None,
    unique_ids: bool | None = None,
) -> list[Row]:
    """All rows of one file; raises DataError listing every bad line (up to 20).

    The file must be UTF-8 (a leading BOM is allowed). Ids must be unique in a file whose rows are predicted or
    pseudo-labelled (``unique_ids``, by default for unlabelled files: a leaderboard file and the teachers join on
    them); a labelled file may repeat them (upstream's csldcp test_public.json repeats 49), which the log says once.
    ``line_ids``: a row without an id gets its line number as id (``Row.id_from_line``). ``data``: the file's
    bytes, read from elsewhere (stdin) and reported as ``path``; ``fmt`` overrides the format of the extension.
    """
    unique_ids = not labelled if unique_ids is None else unique_ids
    path = Path(path)
    fmt = fmt or file_format(path)
    # Bytes, decoded line by line, so that an encoding error names its line.
    data = (path.read_bytes() if data is None else data).removeprefix(codecs.BOM_UTF8)
    records = _json_records(path, data) if fmt == "jsonl" else _table_records(path, data, task, labelled, fmt)
    rows: list[Row] = []
    errors: list[str] = []
    first_line_of: dict[Any, int] = {}
    repeated = 0
    for line_number, raw, error in records:
        if error is None:
            try:
                row = _parse_row(task, raw, path, line_number, labelled, line_ids)
            except DataError as err:
                error = str(err)
            else:
                first = first_line_of.setdefault(row.id, line_number)
                if first != line_number:
                    repeated += 1
                    if unique_ids:
                        error = f"{path}:{line_number}: duplicate id {row.id!r} (first on line {first})"
                rows.append(row)
        if error is not None:
            errors.append(error)
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
    if errors:
        more = " (stopped at the first 20)" if len(errors) >= MAX_REPORTED_ERRORS else ""
        raise DataError(f"{len(errors)} bad row(s) in {path}{more}:\n  " + "\n  ".join(errors))
    if not rows and not allow_empty:
        raise DataError(f"{path}: the file has no rows; a split must not be empty")
    if repeated:
        log.info("%s: %d row(s) repeat an earlier row's id; kept (ids need to be unique only in files whose rows are "
                 "predicted)", path, repeated)
    return rows


Record = tuple[int, Any, "str | None"]  # (line number, the raw row, or the error of that line)


def _not_utf8(path: Path, line_number: int, line: bytes, column: int, reason: str) -> str:
    return (f"{path}:{line_number}: not UTF-8 text (byte 0x{line[column]:02x} at byte {column + 1} "
            f"of the line: {reason}); the file must be UTF-8")


def _one_array(data: bytes, first: bytes) -> bool:
    """Whether the file is one JSON array (``[{...}, ...]``, on one line or pretty-printed) rather than JSON lines;
    ``first``: its first non-blank line."""
    if not first.lstrip().startswith(b"["):
        return False
    if first.strip() == b"[":
        return True  # a pretty-printed array, even one with a mistake further down
    try:
        return isinstance(json.loads(data.decode("utf-8")), list)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False  # JSON lines whose rows are arrays: each line says so


def _json_records(path: Path, data: bytes) -> Iterator[Record]:
    lines = data.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and _one_array(data, lines[first]):
        yield first + 1, None, (f"{path}:{first + 1}: the file is one JSON array; .json/.jsonl files are read as "
                                f"JSON lines (one object per line, no enclosing [ ])")
        return
    for line_number, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            yield line_number, None, _not_utf8(path, line_number, line, err.start, err.reason)
            return  # the whole file is most likely in another encoding: one line says it
        if not text.strip():
            continue
        try:
            yield line_number, json.loads(text), None
        except json.JSONDecodeError as err:
            yield line_number, None, f"{path}:{line_number}: malformed JSON ({err.msg} at column {err.colno})"


def _merged_rows(cells: list[str], delimiter: str, columns: int) -> int | None:
    """The index of a cell that spans lines holding what looks like whole rows of the file (an unterminated quote
    swallowed them), or None; a quoted text with a line break of its own passes."""
    for index, cell in enumerate(cells):
        inner = cell.split("\n")[1:]
        if any(line.count(delimiter) >= columns - 1 for line in inner):
            return index
    return None


def _lift_field_limit() -> None:
    """A cell as long as a JSON line's text: the csv module refuses cells over 131,072 characters by default."""
    try:
        csv.field_size_limit(sys.maxsize)
    except OverflowError:  # a C long of 32 bits (Windows)
        csv.field_size_limit(2**31 - 1)


def _table_records(path: Path, data: bytes, task: TaskSpec, labelled: bool, fmt: str) -> Iterator[Record]:
    """Rows of a csv/tsv file with a header, as {column: cell} (an empty id or label cell is a missing value).
    The header must name the task's text fields (and its label field, for a labelled file)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        start = data.rfind(b"\n", 0, err.start) + 1
        line_number = data.count(b"\n", 0, err.start) + 1
        yield line_number, None, _not_utf8(path, line_number, data[start:], err.start - start, err.reason)
        return
    _lift_field_limit()
    options = {"delimiter": ","} if fmt == "csv" else {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    reader = csv.reader(io.StringIO(text, newline=""), **options)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as err:
        yield 1, None, f"{path}:1: unreadable header ({err})"
        return
    needed = [*task.text_fields, *([task.label_field] if labelled else [])]
    absent = [name for name in needed if name not in header]
    if absent:
        yield 1, None, f"{path}:1: field {absent[0]!r}: no such column in the header; the header has {header}"
        return
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        yield 1, None, f"{path}:1: field {repeated[0]!r}: the header names it twice"
        return
    optional = {*task.id_fields, task.label_field}
    end = reader.line_num
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield start, None, f"{path}:{start}: unreadable {fmt} row ({err})"
            return
        end = reader.line_num
        if not cells or all(not cell.strip() for cell in cells):
            continue
        merged = _merged_rows(cells, options["delimiter"], len(header))
        if end > start and merged is not None:
            yield start, None, (f"{path}:{start}: field {header[merged]!r}: a quote opened on this line closes only on "
                                f"line {end}, so lines {start}-{end} read as one row; close the quote (or double a "
                                f"quote inside a text)")
            continue
        if len(cells) > len(header):
            yield start, None, (f"{path}:{start}: {len(cells)} cells, the header has {len(header)} "
                                f"({'quote a text that holds a comma' if fmt == 'csv' else 'a tab inside a text?'})")
            continue
        yield start, {name: cell for name, cell in zip(header, cells) if cell.strip() or name not in optional}, None
