"""Pretraining text: plain-text lines, JSON lines with a text field, TSV with a header, FewCLUE texts.

``CorpusSource`` (``data.corpus`` in the config) says where the text comes from; ``read_corpus``
turns it into a list of de-duplicated sentences no longer than ``max_chars`` characters.

Rules, applied in this order:
- a line whose every second character is a space (``中 年 男 性``, the medical_ner TSV) is
  rejoined into ``中年男性`` (``join_spaced_chars``);
- files named ``dev*``/``test*``/``val*`` are left out unless ``include_eval_splits=true``, so dev
  and test texts never reach pretraining by default; FewCLUE contributes the texts of its
  training split (``fewclue_split``) and ``unlabeled.json``, never dev/test/test_public, and never a
  label (chid's blank stays empty: its labelled rows give the text either side, like unlabelled ones);
- a text longer than ``max_chars`` is cut at sentence punctuation (。！？；!?;) into pieces of at most
  ``max_chars`` characters (a piece with no punctuation is cut hard);
- exact duplicates are kept once (the first occurrence).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datamodules.tasks.download import locate_task_dir, split_files
from datamodules.tasks.rows import Row, read_rows
from datamodules.tasks.task_configs import load_task_specs
from datamodules.tasks.task_spec import TaskSpec
from datamodules.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = {".txt": "text", ".text": "text", ".json": "jsonl", ".jsonl": "jsonl", ".tsv": "tsv"}
TEXT_FIELDS = ("text", "text_a", "sentence", "content")
EVAL_SPLIT = re.compile(r"^(dev|test|val|valid|validation)([_.\-]|$)", re.IGNORECASE)
SENTENCE_END = re.compile(r"(?<=[。！？；!?;])")

csv.field_size_limit(sys.maxsize)


@dataclass
class CorpusSource:
    """Where pretraining text comes from (``data.corpus``).

    ``files``: files or folders (a folder means every file under it with a known suffix:
    .txt/.text lines, .json/.jsonl JSON lines, .tsv with a header). ``text_field``: the JSON key
    or TSV column holding the text; None tries text, text_a, sentence, content in that order.
    ``fewclue_tasks``: tasks whose texts join the corpus (None = every task in conf/task, [] = none).
    """

    files: list[str] | str | None = None
    text_field: str | None = None
    include_eval_splits: bool = False
    join_spaced_chars: bool = True
    max_chars: int = 126
    fewclue_dir: str | None = None
    fewclue_tasks: list[str] | None = None
    fewclue_split: str = "all"
    fewclue_train: bool = True
    fewclue_unlabeled: bool = True
    max_lines_per_file: int | None = None
    task_dir: str | None = None

    def __post_init__(self) -> None:
        if self.max_chars < 8:
            raise ConfigError(f"data.corpus.max_chars={self.max_chars}; must be at least 8")
        split_files(str(self.fewclue_split))  # fails early on a bad split name
        self.fewclue_split = str(self.fewclue_split)


# -- one file ------------------------------------------------------------------------------------
def rejoin_spaced(text: str) -> str:
    """``中 年 男 性 ， 4 8 岁`` -> ``中年男性，48岁``: every second character a space means spaced-out characters."""
    if len(text) >= 3 and text[1::2].strip(" ") == "" and " " not in text[0::2]:
        return text[0::2]
    return text


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown corpus file type {path.suffix!r}; allowed suffixes: {sorted(FORMATS)}")
    return fmt


def _pick_field(names: list[str] | set[str], wanted: str | None, where: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"{where}: no field {wanted!r} (data.corpus.text_field); it has {sorted(names)}")
        return wanted
    for name in TEXT_FIELDS:
        if name in names:
            return name
    raise DataError(f"{where}: none of the text fields {list(TEXT_FIELDS)} is present; it has {sorted(names)}. "
                    "Set data.corpus.text_field")


def read_text_file(path: Path, text_field: str | None = None, limit: int | None = None) -> Iterator[str]:
    """The text of every line/row of one corpus file; bad rows raise DataError with file and line."""
    fmt = file_format(path)
    with path.open(encoding="utf-8", newline="") as handle:
        if fmt == "tsv":
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                return
            column = header.index(_pick_field(header, text_field, f"{path}:1 (TSV header)"))
            for count, row in enumerate(reader):
                if limit is not None and count >= limit:
                    return
                if len(row) <= column:
                    if not any(cell.strip() for cell in row):
                        continue
                    raise DataError(f"{path}:{reader.line_num}: {len(row)} column(s), the text column "
                                    f"{header[column]!r} is number {column + 1}")
                yield row[column]
            return
        for number, line in enumerate(_lines(handle), start=1):
            if limit is not None and number > limit:
                return
            if not line.strip():
                continue
            if fmt == "text":
                yield line
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(raw, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(raw).__name__}")
            name = _pick_field(set(raw), text_field, f"{path}:{number}")
            if not isinstance(raw[name], str):
                raise DataError(f"{path}:{number}: field {name!r} is {type(raw[name]).__name__}, not text")
            yield raw[name]


def _lines(handle) -> Iterator[str]:
    # FewCLUE-style texts contain U+2028: split on "\n" only, never str.splitlines().
    for line in handle:
        yield line.rstrip("\r\n")


# -- FewCLUE -------------------------------------------------------------------------------------
def row_texts(task: TaskSpec, row: Row) -> list[str]:
    """The natural-language texts of one row: each text field (never a label). chid gives the text left
    and right of the blank as two texts, labelled rows too: the gold idiom is never filled in, so a
    pretraining corpus built from ``train_few_all`` does not hand a chain evaluated on split k the
    answers of the other splits' rows."""
    if task.kind == "multiple_choice":
        return [row.fields["left"], row.fields["right"]]
    return [str(row.fields[name]) for name in task.text_fields]


def without_evaluated_texts(task: TaskSpec, folder: Path, rows: list[Row]) -> list[Row]:
    """Unlabeled rows whose texts are not those of a dev or test row of any split (dev_k, dev_few_all, test.json,
    test_public.json): eprstmt's unlabeled.json repeats dozens of them word for word."""
    evaluated = {tuple(row_texts(task, row)) for path in sorted(folder.glob("*.json")) if EVAL_SPLIT.match(path.name)
                 for row in read_rows(task, path, labelled=False, allow_empty=True)}
    kept = [row for row in rows if tuple(row_texts(task, row)) not in evaluated]
    if len(kept) < len(rows):
        log.info("%s/unlabeled.json: %d rows repeat a dev/test text and stay out of the corpus", task.name,
                 len(rows) - len(kept))
    return kept


def fewclue_texts(source: CorpusSource, cache_dir: str | Path) -> Iterator[tuple[str, str]]:
    """(source name, text) for the training split and unlabeled.json of each FewCLUE task."""
    if source.fewclue_tasks is not None and not source.fewclue_tasks:
        return
    if not source.fewclue_dir:
        raise DataError("data.corpus.fewclue_dir is not set (and FEWCLUE_DIR is unset); "
                        "set it, or data.corpus.fewclue_tasks=[] to leave FewCLUE out of the corpus")
    train_name, _ = split_files(source.fewclue_split)
    for task in load_task_specs(source.fewclue_tasks, source.task_dir):
        folder = locate_task_dir(task.name, source.fewclue_split, source.fewclue_dir, cache_dir)
        files = []
        if source.fewclue_train:
            files.append((folder / train_name, True))
        unlabeled = folder / "unlabeled.json"
        if source.fewclue_unlabeled and unlabeled.is_file() and unlabeled.stat().st_size > 0:
            files.append((unlabeled, False))
        for path, labelled in files:
            rows = read_rows(task, path, labelled=labelled, allow_empty=not labelled)
            if not labelled:
                rows = without_evaluated_texts(task, folder, rows)
            if source.max_lines_per_file is not None:
                rows = rows[: source.max_lines_per_file]
            for row in rows:
                for text in row_texts(task, row):
                    yield f"fewclue/{task.name}/{path.name}", text


# -- the whole corpus ----------------------------------------------------------------------------
def corpus_files(source: CorpusSource) -> list[Path]:
    """Every corpus file named by ``source.files`` (folders expanded, eval splits left out by default)."""
    entries = [source.files] if isinstance(source.files, str) else list(source.files or [])
    paths: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS)
            if not found:
                raise DataError(f"data.corpus.files: folder {path} has no file ending in {sorted(FORMATS)}")
            paths += [p for p in found if source.include_eval_splits or not EVAL_SPLIT.match(p.name)]
        elif path.is_file():
            file_format(path)
            paths.append(path)
        else:
            raise DataError(f"data.corpus.files: {path} does not exist")
    return paths


def split_long(text: str, max_chars: int) -> list[str]:
    """Pieces of at most ``max_chars`` characters, cut after sentence punctuation where possible."""
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    pieces: list[str] = []
    current = ""
    for part in SENTENCE_END.split(text):
        while len(part) > max_chars:  # no punctuation for too long: cut hard
            if current:
                pieces.append(current)
                current = ""
            pieces.append(part[:max_chars])
            part = part[max_chars:]
        if len(current) + len(part) > max_chars:
            pieces.append(current)
            current = part
        else:
            current += part
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def iter_texts(source: CorpusSource, cache_dir: str | Path) -> Iterator[tuple[str, str]]:
    """(source name, raw text) of every configured file and FewCLUE task."""
    for path in corpus_files(source):
        for text in read_text_file(path, source.text_field, source.max_lines_per_file):
            yield str(path), text
    yield from fewclue_texts(source, cache_dir)


def read_corpus(source: CorpusSource, cache_dir: str | Path) -> tuple[list[str], dict[str, int]]:
    """De-duplicated sentences and the number each input contributed."""
    seen: set[str] = set()
    sentences: list[str] = []
    counts: dict[str, int] = {}
    for name, text in iter_texts(source, cache_dir):
        if source.join_spaced_chars:
            text = rejoin_spaced(text)
        for piece in split_long(text, source.max_chars):
            if piece not in seen:
                seen.add(piece)
                sentences.append(piece)
                counts[name] = counts.get(name, 0) + 1
    return sentences, counts
