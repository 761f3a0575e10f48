"""The facts of one task, read from ``conf/task/<task>.yaml`` (or a user's own task folder on Hydra's search path)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamodules.errors import ConfigError

KINDS = ("classification", "multiple_choice", "span_pair")


@dataclass
class TaskSpec:
    """Fields, labels and prompts of a task.

    ``labels`` maps the official label, as written in the data files (stringified), to its Chinese
    name, in the order that defines class indices. ``multiple_choice`` tasks (chid) have no fixed
    labels: the class is the index of the right candidate.
    """

    name: str
    text_fields: list[str]
    # Text fields whose value is a list of strings, read joined with "，" (csl's keywords); a list in any other field
    # is a data error.
    list_fields: list[str] = field(default_factory=list)
    # A task of one's own (``data=files``) may leave out what only FewCLUE needs: the kind (a classification),
    # the label field ("label") and the leaderboard file's name (predictions/<name>_predict.json).
    kind: str = "classification"
    label_field: str = "label"
    submission_file: str | None = None
    id_fields: list[str] = field(default_factory=lambda: ["id"])
    labels: dict[str, str] = field(default_factory=dict)
    label_type: str = "str"
    candidates_field: str | None = None
    mask_marker: str | None = None
    # A pattern is its text, or {text: ..., verbalizers: {set: {label: [words]}}} when the task's sets do not
    # read well in it (its own sets then replace the task's for that pattern).
    patterns: list = field(default_factory=list)
    verbalizers: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    num_choices: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"task.kind={self.kind!r} for task {self.name!r}; allowed: {list(KINDS)}")
        if self.label_type not in ("str", "int"):
            raise ConfigError(f"task.label_type={self.label_type!r}; allowed: ['str', 'int']")
        # Plain containers, also when Hydra hands in DictConfig/ListConfig nodes (``task: ${task}``).
        self.text_fields = _names(self.text_fields, self.name, "text_fields")
        self.id_fields = _names(self.id_fields, self.name, "id_fields")
        self.list_fields = _names(self.list_fields, self.name, "list_fields")
        stray = [name for name in self.list_fields if name not in self.text_fields]
        if stray:
            raise ConfigError(f"task {self.name!r}: task.list_fields {stray} are not text fields; "
                              f"allowed: {self.text_fields}")
        if self.kind == "classification" and not 1 <= len(self.text_fields) <= 2:
            raise ConfigError(f"task {self.name!r}: task.text_fields={self.text_fields}; need 1 or 2 field names "
                              "for a classification task (one text, or a sentence pair)")
        for key, names in (("text_fields", self.text_fields), ("id_fields", self.id_fields)):
            if not names:
                raise ConfigError(f"task {self.name!r}: task.{key}=[]; need at least 1 field name")
        self.labels = _texts(self.labels, self.name, "labels", "{label as written in the files: its name}")
        if self.kind != "multiple_choice" and not self.labels:
            raise ConfigError(f"task {self.name!r}: task.labels is empty")
        self.descriptions = _texts(self.descriptions, self.name, "descriptions", "{label: one sentence}")
        self.pattern_verbalizers: dict[int, dict[str, dict[str, list[str]]]] = {}
        texts = []
        for i, pattern in enumerate(_items(self.patterns, self.name, "patterns", "a list of patterns")):
            key = f"patterns[{i}]"
            if isinstance(pattern, str):
                texts.append(pattern)
                continue
            if not isinstance(pattern, Mapping) or not isinstance(pattern.get("text"), str):
                raise ConfigError(
                    f"task {self.name!r}: task.{key} is neither a text nor {{text: ..., verbalizers: ...}}"
                )
            unknown = [str(k) for k in pattern if k not in ("text", "verbalizers")]
            if unknown:
                raise ConfigError(
                    f"task {self.name!r}: task.{key} has key(s) {unknown}; allowed: ['text', 'verbalizers']"
                )
            texts.append(pattern["text"])
            if pattern.get("verbalizers"):
                self.pattern_verbalizers[i] = _word_tables(pattern["verbalizers"], self.name, f"{key}.verbalizers")
        self.patterns = texts
        self.verbalizers = _word_tables(self.verbalizers, self.name, "verbalizers")

    def verbalizers_for(self, pattern: int) -> dict[str, dict[str, list[str]]]:
        """The label-word sets used with ``patterns[pattern]``: its own, else the task's."""
        return self.pattern_verbalizers.get(pattern, self.verbalizers)

    def label_words(self) -> list[str]:
        """Every label word of every set, the patterns' own sets included."""
        tables = [self.verbalizers, *self.pattern_verbalizers.values()]
        return [w for sets in tables for table in sets.values() for words in table.values() for w in words]

    @property
    def prediction_file(self) -> str:
        """The file name of the predictions of ``data.predict`` / test.json in the run's predictions/."""
        return self.submission_file or f"{self.name}_predict.json"

    @property
    def label_list(self) -> list[str]:
        return list(self.labels)

    @property
    def num_classes(self) -> int:
        return self.num_choices if self.kind == "multiple_choice" else len(self.labels)

    def official_label(self, class_index: int) -> Any:
        """The label as the leaderboard expects it for a predicted class index."""
        if self.kind == "multiple_choice":
            return int(class_index)
        label = self.label_list[class_index]
        return int(label) if self.label_type == "int" else label


def label_key(label: Any) -> str:
    """A label as the data files' cells are read (``rows._class_index``): YAML reads an unquoted true/false as a
    boolean, which stands for the label 'true'/'false' (str() would give 'True')."""
    return str(label).lower() if isinstance(label, bool) else str(label)


# A text where a list of words is expected is one word, unless it reads as several.
WORD_SEPARATORS = re.compile(r"[\s,，、;；]+")


def _shape(value: Any) -> str:
    if isinstance(value, str):
        return "a text"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, Sequence):
        return "a list"
    return repr(value)


def _mapping(value: Any, task: str, key: str, shape: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"task {task!r}: task.{key} is {_shape(value)}; need a mapping {shape}")
    return value


def _items(value: Any, task: str, key: str, need: str) -> list:
    """A list; a single text is a list of one (``text_fields: review``)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping) or not isinstance(value, Sequence):
        raise ConfigError(f"task {task!r}: task.{key} is {_shape(value)}; need {need}")
    return list(value)


def _scalar(value: Any, task: str, key: str, need: str) -> str:
    if value is None or (isinstance(value, (Mapping, Sequence)) and not isinstance(value, str)):
        raise ConfigError(f"task {task!r}: task.{key} is {_shape(value)}; need {need}")
    return str(value)


def _names(value: Any, task: str, key: str) -> list[str]:
    names = _items(value, task, key, "a list of field names")
    return [_scalar(name, task, f"{key}[{i}]", "a field name") for i, name in enumerate(names)]


def _texts(value: Any, task: str, key: str, shape: str) -> dict[str, str]:
    """{label: text} with the labels as the files are read."""
    table = _mapping(value, task, key, shape)
    return {
        label_key(label): _scalar(text, task, f"{key}.{label_key(label)}", "a text") for label, text in table.items()
    }


def _word_tables(tables: Any, task: str, key: str) -> dict[str, dict[str, list[str]]]:
    """{set: {label: [words]}}; a single word may be written without brackets (``good: 满意``)."""
    out = {}
    for name, table in _mapping(tables, task, key, "{set: {label: [words]}}").items():
        where = f"{key}.{name}"
        out[str(name)] = {
            label_key(label): _words(words, task, f"{where}.{label_key(label)}")
            for label, words in _mapping(table, task, where, "{label: [words]}").items()
        }
    return out


def _words(words: Any, task: str, key: str) -> list[str]:
    if isinstance(words, str) and WORD_SEPARATORS.search(words.strip()):
        listed = ", ".join(WORD_SEPARATORS.split(words.strip()))
        raise ConfigError(
            f"task {task!r}: task.{key}={words!r} is one text; write several words as a list [{listed}]"
        )
    listed = _items(words, task, key, "a list of words")
    return [_scalar(word, task, f"{key}[{i}]", "a word") for i, word in enumerate(listed)]
