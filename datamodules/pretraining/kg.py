"""Knowledge graphs: ``subject \\t predicate \\t object`` files and DuIE-style JSON lines.

``KgSource`` (``data.kg`` in the config) names the files; ``load_kg`` reads them into one
``KnowledgeGraph`` (de-duplicated triples with subject/object indexes) plus the sentences that
DuIE files bring already aligned with their ``spo_list``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from datamodules.errors import DataError

Triple = tuple[str, str, str]
SPO_SUFFIXES = (".spo", ".tsv", ".txt")
DUIE_SUFFIXES = (".json", ".jsonl")


@dataclass
class KgSource:
    """Knowledge-graph files (``data.kg``): files or folders; a folder contributes its files whose
    name ends with one of ``folder_suffixes`` (``*.spo`` by default)."""

    files: list[str] | str | None = None
    folder_suffixes: tuple[str, ...] = (".spo",)

    def paths(self) -> list[Path]:
        entries = [self.files] if isinstance(self.files, str) else list(self.files or [])
        found: list[Path] = []
        for entry in entries:
            path = Path(entry)
            if path.is_dir():
                suffixes = tuple(self.folder_suffixes)
                inside = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
                if not inside:
                    raise DataError(f"data.kg.files: folder {path} has no file ending in {list(self.folder_suffixes)}")
                found += inside
            elif path.is_file():
                if not path.name.endswith(SPO_SUFFIXES + DUIE_SUFFIXES):
                    raise DataError(f"data.kg.files: {path} is neither a triple file {SPO_SUFFIXES} "
                                    f"nor DuIE JSON lines {DUIE_SUFFIXES}")
                found.append(path)
            else:
                raise DataError(f"data.kg.files: {path} does not exist")
        return found


def read_spo(path: Path) -> list[Triple]:
    """Triples of a tab-separated ``subject \\t predicate \\t object`` file (blank lines skipped)."""
    triples: list[Triple] = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise DataError(f"{path}:{number}: expected 3 tab-separated fields (subject, predicate, object), "
                                f"got {len(parts)}")
            subject, predicate, obj = (p.strip() for p in parts)
            for name, value in (("subject", subject), ("predicate", predicate), ("object", obj)):
                if not value:
                    raise DataError(f"{path}:{number}: field {name!r} is empty")
            triples.append((subject, predicate, obj))
    return triples


def _duie_value(value, where: str, name: str) -> str:
    # DuIE 2.0 writes objects as {"@value": ..., <slot>: ...}; DuIE 1.0 as plain strings.
    if isinstance(value, dict):
        value = value.get("@value")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field spo_list[].{name} must be a non-empty string (or {{'@value': ...}})")
    return value.strip()


def read_duie(path: Path) -> list[tuple[str, list[Triple]]]:
    """(text, triples) per line of a DuIE-format file: ``{"text": ..., "spo_list": [{subject, predicate, object}]}``."""
    sentences: list[tuple[str, list[Triple]]] = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(raw, dict) or not isinstance(raw.get("text"), str):
                raise DataError(f"{where}: missing field 'text'")
            if not isinstance(raw.get("spo_list"), list):
                raise DataError(f"{where}: missing field 'spo_list' (a list of subject/predicate/object)")
            triples = [
                (_duie_value(spo.get("subject"), where, "subject"),
                 _duie_value(spo.get("predicate"), where, "predicate"),
                 _duie_value(spo.get("object"), where, "object"))
                for spo in raw["spo_list"]
            ]
            sentences.append((raw["text"], triples))
    return sentences


class KnowledgeGraph:
    """De-duplicated triples with the indexes that alignment, negatives and sub-graphs need."""

    def __init__(self, triples: list[Triple]) -> None:
        self.triples: list[Triple] = list(dict.fromkeys(triples))
        self.triple_set = set(self.triples)
        self.by_subject: dict[str, list[int]] = defaultdict(list)
        self.by_object: dict[str, list[int]] = defaultdict(list)
        subjects: dict[str, dict[str, None]] = defaultdict(dict)
        objects: dict[str, dict[str, None]] = defaultdict(dict)
        for index, (s, p, o) in enumerate(self.triples):
            self.by_subject[s].append(index)
            self.by_object[o].append(index)
            subjects[p][s] = None
            objects[p][o] = None
        self.by_subject = dict(self.by_subject)
        self.by_object = dict(self.by_object)
        self.predicates: list[str] = list(subjects)
        self.subjects_of: dict[str, list[str]] = {p: list(names) for p, names in subjects.items()}
        self.objects_of: dict[str, list[str]] = {p: list(names) for p, names in objects.items()}
        # The same as sets (dict keys): is a name a subject/object of a predicate (its type there)?
        self.subject_set_of: dict[str, dict[str, None]] = dict(subjects)
        self.object_set_of: dict[str, dict[str, None]] = dict(objects)
        self.entity_names: list[str] = list(dict.fromkeys([*self.by_subject, *self.by_object]))

    def names(self) -> list[str]:
        """Every subject and object name."""
        return self.entity_names

    def __len__(self) -> int:
        return len(self.triples)

    def predicates_of_subject(self, name: str) -> list[str]:
        """The predicates under which ``name`` is a subject, each once."""
        return list(dict.fromkeys(self.triples[i][1] for i in self.by_subject.get(name, ())))

    def degree(self, name: str) -> int:
        return len(self.by_subject.get(name, ())) + len(self.by_object.get(name, ()))

    def neighbors(self, name: str, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (predicate, neighbour) pairs: the objects of ``name`` first, then its subjects."""
        found: list[tuple[str, str]] = []
        for index in self.by_subject.get(name, ()):
            if len(found) >= limit:
                return found
            _, p, o = self.triples[index]
            found.append((p, o))
        for index in self.by_object.get(name, ()):
            if len(found) >= limit:
                return found
            s, p, _ = self.triples[index]
            found.append((p, s))
        return found


def load_kg(source: KgSource) -> tuple[KnowledgeGraph, list[tuple[str, list[Triple]]]]:
    """The graph of every file in ``source`` and the sentences DuIE files bring with their triples."""
    triples: list[Triple] = []
    sentences: list[tuple[str, list[Triple]]] = []
    for path in source.paths():
        if path.name.endswith(DUIE_SUFFIXES):
            found = read_duie(path)
            sentences += found
            triples += [t for _, spo in found for t in spo]
        else:
            triples += read_spo(path)
    return KnowledgeGraph(triples), sentences
