"""The facts of one task, read from ``conf/task/<task>.yaml`` (or a user's own task folder on Hydra's search path)."""

from __future__ import annotations

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
        if self.kind != "multiple_choice" and not self.labels:
            raise ConfigError(f"task {self.name!r}: task.labels is empty")
        if self.label_type not in ("str", "int"):
            raise ConfigError(f"task.label_type={self.label_type!r}; allowed: ['str', 'int']")
        # Plain containers, also when Hydra hands in DictConfig/ListConfig nodes (``task: ${task}``).
        self.text_fields = [str(f) for f in self.text_fields]
        self.id_fields = [str(f) for f in self.id_fields]
        self.labels = {str(k): str(v) for k, v in self.labels.items()}
        self.pattern_verbalizers: dict[int, dict[str, dict[str, list[str]]]] = {}
        texts = []
        for i, pattern in enumerate(self.patterns):
            if isinstance(pattern, str):
                texts.append(pattern)
                continue
            if not hasattr(pattern, "get") or "text" not in pattern:
                raise ConfigError(f"task {self.name!r}: task.patterns[{i}] is neither a text nor {{text: ..., verbalizers: ...}}")
            texts.append(str(pattern["text"]))
            if pattern.get("verbalizers"):
                self.pattern_verbalizers[i] = _word_tables(pattern["verbalizers"])
        self.patterns = texts
        self.descriptions = {str(k): str(v) for k, v in self.descriptions.items()}
        self.verbalizers = _word_tables(self.verbalizers)

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


def _word_tables(tables) -> dict[str, dict[str, list[str]]]:
    return {str(name): {str(label): [str(w) for w in words] for label, words in table.items()} for name, table in tables.items()}
