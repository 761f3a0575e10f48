"""The entailment-pretraining DataModule (``data=entailment``): every task rewritten as entailment.

Each labelled training row of each task (``tasks``, all nine by default, split ``data.split``)
becomes pairs ``[CLS] text [SEP] description [SEP] -> entailed (1) / not entailed (0)``:

- classification tasks: the description of the true label (``descriptions`` in conf/task/<task>.yaml)
  is entailed; ``negatives`` descriptions of other labels, drawn at random, are not;
- native NLI tasks (``nli_tasks``, ocnli): premise and hypothesis as they are; entailed iff the label
  is the task's entailment label (neutral and contradiction are "not entailed");
- chid: the content with a blank (＿＿＿＿) where the idiom goes, described by ``chid_description``
  ("这里应填“{candidate}”。"): the right idiom is entailed, ``negatives`` of the six others are not;
- cluewsc: the text with ``wsc_description`` ("“{span2}”指的是“{span1}”。"), entailed iff the label is true.

Tasks are mixed by temperature sampling: task t is drawn with probability proportional to
n_t ** ``temperature_alpha`` (n_t = its number of pairs; 1.0 = proportional, 0.0 = uniform, 0.5 by
default lifts small tasks such as cluewsc without repeating them 20 times). Validation pairs are
built the same way from the dev split (first ``val_rows_per_task`` rows of each task); ``val/acc``
scores rows: a row is right when its entailed description gets the highest entailment probability
among the row's pairs (a one-pair row: when the probability is on the right side of 0.5).

A second loader gives masked-LM texts from ``unlabeled.json`` of every task that has one, for the
weighted MLM loss of the stage, without the rows whose texts are a dev or test row's (``without_evaluated_texts``:
the MLM never reads an evaluated text); the two are combined batch by batch.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.pretraining.corpus import row_texts, split_long, without_evaluated_texts
from datamodules.epoch_shuffle import EpochShuffle, fixed_generator
from datamodules.tasks.download import locate_task_dir, split_files
from datamodules.tasks.rows import Row, read_rows
from datamodules.mlm_texts import MlmText, mlm_loader
from datamodules.tasks.task_configs import load_task_specs
from datamodules.tasks.task_spec import TaskSpec
from datamodules.errors import ConfigError, DataError

log = logging.getLogger(__name__)
BLANK = "＿＿＿＿"


@dataclass
class EntailmentPair:
    task: str
    text: str
    description: str
    label: int  # 1 = entailed, 0 = not entailed
    group: int = -1  # the pairs of one row share a group (val/acc scores rows, not pairs)


def pairs_for_row(
    task: TaskSpec,
    row: Row,
    rng: random.Random,
    negatives: int,
    nli_label: str | None,
    chid_description: str,
    wsc_description: str,
    chid_window: int = 100,
) -> list[EntailmentPair]:
    """The entailment pairs of one labelled row (see the module docstring for the rule per task kind)."""
    if task.kind == "multiple_choice":
        left, right = row.fields["left"][-chid_window:], row.fields["right"][:chid_window]
        text = left + BLANK + right
        candidates = row.fields["candidates"]
        wrong = [c for j, c in enumerate(candidates) if j != row.label]
        chosen = [candidates[row.label], *rng.sample(wrong, min(negatives, len(wrong)))]
        return [EntailmentPair(task.name, text, chid_description.format(candidate=c), int(j == 0))
                for j, c in enumerate(chosen)]
    if task.kind == "span_pair":
        description = wsc_description.format(span1=row.fields["span1"], span2=row.fields["span2"])
        return [EntailmentPair(task.name, row.fields["text"], description, int(task.label_list[row.label] == "true"))]
    label = task.label_list[row.label]
    if nli_label is not None:
        premise, hypothesis = (row.fields[name] for name in task.text_fields[:2])
        return [EntailmentPair(task.name, premise, hypothesis, int(label == nli_label))]
    missing = [name for name in task.label_list if name not in task.descriptions]
    if missing:
        raise ConfigError(f"conf/task/{task.name}.yaml: descriptions has no entry for label(s) {missing}; "
                          "entailment pretraining needs one description per label")
    text = "；".join(str(row.fields[name]) for name in task.text_fields)
    others = [name for name in task.label_list if name != label]
    chosen = [label, *rng.sample(others, min(negatives, len(others)))]
    return [EntailmentPair(task.name, text, task.descriptions[name], int(j == 0)) for j, name in enumerate(chosen)]


def group_batches(pairs: list[EntailmentPair], batch_size: int) -> list[list[int]]:
    """Consecutive batches of pair indices that never split a row's pairs (a row may exceed batch_size alone)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for start, end in _group_ranges(pairs):
        if current and len(current) + end - start > batch_size:
            batches.append(current)
            current = []
        current.extend(range(start, end))
    if current:
        batches.append(current)
    return batches


def _group_ranges(pairs: list[EntailmentPair]) -> list[tuple[int, int]]:
    ranges, start = [], 0
    for i in range(1, len(pairs) + 1):
        if i == len(pairs) or pairs[i].group != pairs[start].group:
            ranges.append((start, i))
            start = i
    return ranges


def task_weights(counts: dict[str, int], alpha: float) -> dict[str, float]:
    """Probability of drawing each task: n_t ** alpha, normalised."""
    raw = {name: n ** alpha for name, n in counts.items() if n > 0}
    total = sum(raw.values())
    return {name: value / total for name, value in raw.items()}


class EntailmentDataModule(LightningDataModule):
    # No labelled test set and nothing to predict: pretraining exports a backbone.
    evaluation_sets = ()
    predict_rows: list = []

    def __init__(
        self,
        tasks: list[str] | None,
        split: str | int,
        data_dir: str,
        cache_dir: str,
        nli_tasks: dict[str, str],
        negatives: int,
        temperature_alpha: float,
        chid_description: str,
        wsc_description: str,
        val_rows_per_task: int | None,
        unlabeled: bool,
        max_unlabeled_per_task: int | None,
        max_chars: int,
        batch_size: int,
        mlm_batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        seed: int,
        task_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks) if tasks is not None else None
        self.task_dir = task_dir
        self.split = str(split)
        split_files(self.split)
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.nli_tasks = {str(k): str(v) for k, v in nli_tasks.items()}
        self.negatives = negatives
        if temperature_alpha < 0:
            raise ConfigError(f"data.temperature_alpha={temperature_alpha}; allowed: >= 0 (0 uniform, 1 proportional)")
        self.temperature_alpha = temperature_alpha
        for key, template, fields in (("chid_description", chid_description, ("candidate",)),
                                      ("wsc_description", wsc_description, ("span1", "span2"))):
            try:
                template.format(**{f: "x" for f in fields})
            except (KeyError, IndexError) as err:
                raise ConfigError(f"data.{key}={template!r} uses {err}; allowed placeholders: {list(fields)}") from None
        self.chid_description = chid_description
        self.wsc_description = wsc_description
        self.val_rows_per_task = val_rows_per_task
        self.unlabeled = unlabeled
        self.max_unlabeled_per_task = max_unlabeled_per_task
        self.max_chars = max_chars
        self.batch_size = batch_size
        self.mlm_batch_size = mlm_batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.collate_fn: Callable[[list], dict] | None = None
        self.collate_mlm: Callable[[list[MlmText]], dict] | None = None
        self.stats: dict = {}
        self.specs: list[TaskSpec] = []
        self.train_pairs: list[EntailmentPair] = []
        self.val_pairs: list[EntailmentPair] = []
        self.mlm_texts: list[MlmText] = []
        self.mixing: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def prepare_data(self) -> None:
        for spec in load_task_specs(self.tasks, self.task_dir):
            locate_task_dir(spec.name, self.split, self.data_dir, self.cache_dir)

    def _pairs(self, spec: TaskSpec, rows: list[Row], rng: random.Random, first_group: int = 0) -> list[EntailmentPair]:
        nli_label = self.nli_tasks.get(spec.name)
        if nli_label is not None and nli_label not in spec.labels:
            raise ConfigError(f"data.nli_tasks.{spec.name}={nli_label!r} is not a label of {spec.name}; "
                              f"allowed: {spec.label_list}")
        pairs = []
        for group, row in enumerate(rows, start=first_group):
            for pair in pairs_for_row(spec, row, rng, self.negatives, nli_label, self.chid_description,
                                      self.wsc_description):
                pair.group = group
                pairs.append(pair)
        return pairs

    def setup(self, stage: str | None = None) -> None:
        if self.specs:
            return
        self.specs = load_task_specs(self.tasks, self.task_dir)
        unknown = sorted(set(self.nli_tasks) - {s.name for s in self.specs})
        if unknown:
            raise ConfigError(f"data.nli_tasks names {unknown}, which are not in data.tasks "
                              f"({[s.name for s in self.specs]})")
        train_name, dev_name = split_files(self.split)
        rng = random.Random(self.seed)
        counts: dict[str, int] = {}
        for spec in self.specs:
            folder = locate_task_dir(spec.name, self.split, self.data_dir, self.cache_dir)
            train = self._pairs(spec, read_rows(spec, folder / train_name, labelled=True), rng)
            dev_rows = read_rows(spec, folder / dev_name, labelled=True)[: self.val_rows_per_task]
            self.train_pairs += train
            first = self.val_pairs[-1].group + 1 if self.val_pairs else 0
            self.val_pairs += self._pairs(spec, dev_rows, random.Random(self.seed + 1), first)
            counts[spec.name] = len(train)
            unlabeled = folder / "unlabeled.json"
            if self.unlabeled and unlabeled.is_file() and unlabeled.stat().st_size > 0:
                rows = read_rows(spec, unlabeled, labelled=False, allow_empty=True)
                rows = without_evaluated_texts(spec, folder, rows)[: self.max_unlabeled_per_task]
                self.mlm_texts += [MlmText(piece) for row in rows for text in row_texts(spec, row)
                                   for piece in split_long(text, self.max_chars)]
        if not self.train_pairs:
            raise DataError(f"entailment pretraining built no training pairs from tasks {self.tasks}")
        self.mixing = task_weights(counts, self.temperature_alpha)
        self.counts = counts
        self.stats = {"entailment/pairs_per_task": dict(counts),
                      "entailment/sampling": {k: round(v, 4) for k, v in self.mixing.items()},
                      "entailment/mlm_texts": len(self.mlm_texts)}
        log.info("entailment pairs per task: %s; sampling probabilities: %s; MLM texts: %d",
                 counts, {k: round(v, 3) for k, v in self.mixing.items()}, len(self.mlm_texts))

    def texts(self) -> list[str]:
        pairs = [*self.train_pairs, *self.val_pairs]
        return [*(p.text for p in pairs), *{p.description for p in pairs}, *(t.text for t in self.mlm_texts)]

    def connect(self, collate: Callable[[list], dict], collate_mlm: Callable[[list[MlmText]], dict] | None = None) -> None:
        self.collate_fn = collate
        self.collate_mlm = collate_mlm

    # -- loaders ---------------------------------------------------------------------------------
    def _loader(self, data, batch_size: int, sampler=None, shuffle: bool = False) -> DataLoader:
        if self.collate_fn is None:
            raise RuntimeError("EntailmentDataModule.collate_fn is not set: the stage module provides it")
        return DataLoader(data, batch_size=batch_size, sampler=sampler, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=self.collate_fn, generator=fixed_generator(self.seed))

    def pair_weights(self) -> torch.Tensor:
        """Per-pair sampling weight: the task's probability shared among its pairs."""
        return torch.tensor([self.mixing[p.task] / self.counts[p.task] for p in self.train_pairs], dtype=torch.double)

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        sampler = EpochShuffle(self.train_pairs, self.seed, weights=self.pair_weights())
        main = self._loader(self.train_pairs, self.batch_size, sampler)
        if self.collate_mlm is None or not self.mlm_texts:
            return main
        extra = mlm_loader(self.mlm_texts, self.mlm_batch_size, len(main), self.collate_mlm, self.seed + 1,
                           self.num_workers)
        return {"main": main, "mlm": extra}

    def val_dataloader(self) -> DataLoader:
        if self.collate_fn is None:
            raise RuntimeError("EntailmentDataModule.collate_fn is not set: the stage module provides it")
        return DataLoader(self.val_pairs, batch_sampler=group_batches(self.val_pairs, self.eval_batch_size),
                          num_workers=self.num_workers, collate_fn=self.collate_fn)
