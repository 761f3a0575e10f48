"""The pretraining DataModule (``data=pretrain_corpus``): corpus sentences aligned with a KG.

prepare_data/setup read the corpus and the KG, align them (``datamodules.pretraining.alignment``) and cache
the result under ``cache_dir/pretrain`` keyed by the input files' names, sizes and mtimes and by
every setting that changes it, so a second run skips the work. A seeded slice of ``val_size``
sentences is held out for validation (masked-token accuracy). Each training draw of a sentence
pairs it with one of its triples, fresh negative SPOs and the KG neighbours of its mentions; the
stage's ``collate`` turns those rows into tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.pretraining.alignment import (
    MENTION_BUCKETS,
    AlignedSentence,
    AlignmentRules,
    Mention,
    align,
    mention_bucket,
)
from datamodules.pretraining.corpus import CorpusSource, corpus_files, read_corpus
from datamodules.epoch_shuffle import EpochShuffle, fixed_generator
from datamodules.tasks.download import split_files
from datamodules.pretraining.kg import KgSource, KnowledgeGraph, Triple, load_kg
from datamodules.pretraining.negatives import sample_negatives
from datamodules.tasks.task_configs import load_task_specs
from datamodules.errors import ConfigError, DataError
from datamodules.runs.writing import replaced

log = logging.getLogger(__name__)
# 2: chid's labelled rows no longer contribute the gold idiom (datamodules.pretraining.corpus.row_texts).
# 3: unlabeled rows repeating a dev/test text are left out (datamodules.pretraining.corpus.without_evaluated_texts).
CACHE_VERSION = 3
# Aligned sentences (with a mention) on which the stages measure their mention masking, and the datamodule
# its negatives, at setup.
MENTION_SAMPLE = 2000


@dataclass
class PretrainRow:
    """One draw of a sentence: its mentions, one paired triple with corrupted copies, and the KG
    neighbours of its mentioned entities. ``mask_seed`` fixes the masking (validation rows)."""

    text: str
    mentions: list[Mention]
    triple: Triple | None
    negatives: list[Triple]
    neighbors: dict[str, list[tuple[str, str]]]
    mask_seed: int | None = None


class AlignedDataset(Dataset):
    def __init__(
        self,
        sentences: list[AlignedSentence],
        kg: KnowledgeGraph,
        negatives: int,
        max_entities: int,
        max_neighbors: int,
        seed: int,
        fixed: bool,
    ) -> None:
        self.sentences = sentences
        self.kg = kg
        self.negatives = negatives
        self.max_entities = max_entities
        self.max_neighbors = max_neighbors
        self.seed = seed
        self.fixed = fixed
        self._draws = 0

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> PretrainRow:
        sentence = self.sentences[index]
        if not self.fixed:
            self._draws += 1
        # Integer-tuple hashes are stable across runs, so draws are reproducible under a seed.
        rng = random.Random(hash((self.seed, index, self._draws)))
        triple = None
        negatives: list[Triple] = []
        if sentence.triples:
            triple = sentence.triples[0] if self.fixed else rng.choice(sentence.triples)
            names = [name for _, _, name in sentence.mentions]
            negatives = sample_negatives(triple, self.kg, self.negatives, rng, sentence.text, names)
        entities = list(dict.fromkeys(name for _, _, name in sentence.mentions))[: self.max_entities]
        neighbors = {name: self.kg.neighbors(name, self.max_neighbors) for name in entities}
        return PretrainRow(
            text=sentence.text,
            mentions=list(sentence.mentions),
            triple=triple,
            negatives=negatives,
            neighbors=neighbors,
            mask_seed=hash((self.seed, index)) & 0x7FFFFFFF if self.fixed else None,
        )


class PretrainCorpusDataModule(LightningDataModule):
    # No labelled test set and nothing to predict: pretraining exports a backbone.
    evaluation_sets = ()
    predict_rows: list = []

    def __init__(
        self,
        split: str | int,
        data_dir: str,
        corpus: CorpusSource,
        kg: KgSource,
        alignment: AlignmentRules,
        cache_dir: str,
        use_cache: bool,
        val_size: int,
        max_sentences: int | None,
        negatives: int,
        max_entities: int,
        max_neighbors: int,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.split = str(split)
        # data.split picks the FewCLUE training split whose texts join the corpus, data.data_dir the
        # FewCLUE copy (the same keys as data=fewclue; train.py records data.split).
        self.corpus = dataclasses.replace(corpus, fewclue_split=self.split, fewclue_dir=data_dir or corpus.fewclue_dir)
        self.kg_source = kg
        self.rules = alignment
        self.cache_dir = cache_dir
        self.val_size = val_size
        self.max_sentences = max_sentences
        self.negatives = negatives
        self.max_entities = max_entities
        self.max_neighbors = max_neighbors
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.use_cache = use_cache
        self.collate_fn: Callable[[list[PretrainRow]], dict] | None = None
        self.kg: KnowledgeGraph | None = None
        self.train_sentences: list[AlignedSentence] = []
        self.val_sentences: list[AlignedSentence] = []
        self.stats: dict[str, float] = {}
        self.sources: dict[str, int] = {}

    # -- reading and aligning --------------------------------------------------------------------
    def _fingerprint(self) -> str:
        """Names, sizes and mtimes of every input file plus every setting that changes the result."""
        files = [*corpus_files(self.corpus), *self.kg_source.paths()]
        tasks = self.corpus.fewclue_tasks
        if self.corpus.fewclue_dir and (tasks is None or tasks):
            train_name, _ = split_files(self.corpus.fewclue_split)
            for task in load_task_specs(tasks, self.corpus.task_dir):
                for name in (train_name, "unlabeled.json"):
                    path = Path(self.corpus.fewclue_dir) / task.name / name
                    if path.is_file():
                        files.append(path)
        described = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        settings = {
            "version": CACHE_VERSION,
            "files": described,
            "corpus": dataclasses.asdict(self.corpus),
            "kg": dataclasses.asdict(self.kg_source),
            "rules": dataclasses.asdict(self.rules),
            "val_size": self.val_size,
            "seed": self.seed,
        }
        return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _cache_path(self) -> Path:
        return Path(self.cache_dir) / "pretrain" / f"aligned-{self._fingerprint()}.pkl"

    def _build(self, kg: KnowledgeGraph, given) -> dict:
        sentences, sources = read_corpus(self.corpus, self.cache_dir)
        if not sentences and not given:
            raise DataError(
                "the pretraining corpus is empty: data.corpus.files found no text and FewCLUE gave none "
                f"(files={self.corpus.files!r}, fewclue_dir={self.corpus.fewclue_dir!r})"
            )
        aligned, stats = align(sentences, kg, self.rules, given)
        order = list(range(len(aligned)))
        random.Random(self.seed).shuffle(order)
        val_count = min(self.val_size, len(aligned) // 5) if len(aligned) > 1 else 0
        val = set(order[:val_count])
        pack = lambda a: (a.text, a.mentions, a.triples)  # noqa: E731 - compact pickles
        return {
            "train": [pack(a) for i, a in enumerate(aligned) if i not in val],
            "val": [pack(aligned[i]) for i in sorted(val)],
            "stats": stats,
            "sources": sources,
        }

    def prepare_data(self) -> None:
        """Align once and write the cache (rank zero); setup reads it."""
        if self.use_cache and not self._cache_path().is_file():
            self._load()

    def _load(self) -> None:
        kg, given = load_kg(self.kg_source)
        path = self._cache_path()
        if self.use_cache and path.is_file():
            with path.open("rb") as handle:
                built = pickle.load(handle)
            log.info("pretraining corpus: aligned sentences read from the cache %s", path)
        else:
            built = self._build(kg, given)
            if self.use_cache:
                with replaced(path) as tmp, tmp.open("wb") as handle:
                    pickle.dump(built, handle, protocol=pickle.HIGHEST_PROTOCOL)
        self.kg = kg
        unpack = lambda rows: [AlignedSentence(*row) for row in rows]  # noqa: E731
        self.train_sentences = unpack(built["train"])
        self.val_sentences = unpack(built["val"])
        if self.max_sentences is not None:
            self.train_sentences = self.train_sentences[: self.max_sentences]
        if not self.train_sentences:
            raise DataError("the pretraining corpus left no training sentences after the validation slice")
        self.stats = dict(built["stats"])
        self.stats.update(self._negative_stats())
        self.sources = dict(built["sources"])

    def setup(self, stage: str | None = None) -> None:
        if self.kg is None:
            self._load()

    def mention_sample(self, size: int, stratified: bool = True) -> list[AlignedSentence]:
        """A fixed (seeded) sample of ``size`` training sentences that have a mention (all of them if fewer).
        Stratified: up to size / 4 sentences per bucket of their longest mention's length (1-2, 3-4, 5-8, 9+
        characters), the rest drawn from all, so that rare long mentions (141 sentences with one of 9+
        characters in the shared corpus) are measured on enough of them."""
        with_mentions = [a for a in self.train_sentences if a.mentions]
        rng = random.Random(self.seed)
        if len(with_mentions) <= size:
            return with_mentions
        if not stratified:
            return rng.sample(with_mentions, size)
        by_bucket: dict[str, list[int]] = {name: [] for _, _, name in MENTION_BUCKETS}
        for i, a in enumerate(with_mentions):
            by_bucket[mention_bucket(max(len(name) for _, _, name in a.mentions))].append(i)
        chosen: set[int] = set()
        for indices in by_bucket.values():
            chosen.update(rng.sample(indices, min(len(indices), size // len(by_bucket))))
        rest = [i for i in range(len(with_mentions)) if i not in chosen]
        chosen.update(rng.sample(rest, size - len(chosen)))
        return [with_mentions[i] for i in sorted(chosen)]

    def mention_counts(self) -> dict[str, int]:
        """Mentions per length bucket in the training sentences."""
        counts = {name: 0 for _, _, name in MENTION_BUCKETS}
        for a in self.train_sentences:
            for _, _, name in a.mentions:
                counts[mention_bucket(len(name))] += 1
        return counts

    def _negative_stats(self) -> dict[str, float]:
        """``kg/negatives_mean`` (negatives per aligned triple) and ``kg/negatives_short`` (share of triples with
        fewer than ``negatives``), drawn once for the first triple of a fixed sample of aligned sentences."""
        sample = [a for a in self.mention_sample(MENTION_SAMPLE, stratified=False) if a.triples]
        if not sample or not self.negatives:
            return {}
        rng = random.Random(self.seed)
        counts = [len(sample_negatives(a.triples[0], self.kg, self.negatives, rng, a.text,
                                       [name for _, _, name in a.mentions])) for a in sample]
        return {"kg/negatives_mean": round(sum(counts) / len(counts), 4),
                "kg/negatives_short": round(sum(c < self.negatives for c in counts) / len(counts), 4)}

    def texts(self) -> list[str]:
        """Every sentence and KG name, for building a character vocabulary."""
        kg_names = [*self.kg.names(), *self.kg.predicates] if self.kg is not None else []
        return [*(a.text for a in self.train_sentences), *(a.text for a in self.val_sentences), *kg_names]

    def connect(self, collate: Callable[[list[PretrainRow]], dict], collate_mlm=None) -> None:
        if collate_mlm is not None:
            raise ConfigError("data=pretrain_corpus has no auxiliary masked-LM loader; the corpus is the stage's own data")
        self.collate_fn = collate

    # -- loaders ---------------------------------------------------------------------------------
    def _dataset(self, sentences: list[AlignedSentence], fixed: bool) -> AlignedDataset:
        return AlignedDataset(
            sentences, self.kg, self.negatives, self.max_entities, self.max_neighbors, self.seed, fixed
        )

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int) -> DataLoader:
        if self.collate_fn is None:
            raise RuntimeError("PretrainCorpusDataModule.collate_fn is not set: the stage module provides it")
        return DataLoader(
            dataset, batch_size=batch_size, sampler=EpochShuffle(dataset, self.seed) if shuffle else None,
            num_workers=self.num_workers, collate_fn=self.collate_fn, persistent_workers=self.num_workers > 0,
            generator=fixed_generator(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._dataset(self.train_sentences, fixed=False), True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        if not self.val_sentences:
            raise DataError("the pretraining corpus has no validation sentences (data.val_size=0 or a tiny corpus)")
        return self._loader(self._dataset(self.val_sentences, fixed=True), False, self.eval_batch_size)
