"""Label-word scoring for cloze patterns: masked-LM slot logits -> word scores -> class scores.

A label word of n characters fills n [MASK] slots; its log-probability is the sum over slots of
the log-probability of its character there (``log_softmax`` over the vocabulary per slot).
Class scores under one of three aggregations, each normalised over classes (``log_softmax``):

- ``sum_prob`` (Fuzzy-PET): log of the sum over the class's words of p(word);
- ``mean_logit`` (PET): mean over the class's words of the word's raw logit (sum of slot logits);
- ``mean_logprob``: mean over the class's words of log p(word).

With one word per class the three agree (per-slot normalisers are shared by every word).
``Verbalizer`` holds the validated word table of a task (several named sets) as token ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from datamodules.errors import ConfigError

AGGREGATIONS = ("sum_prob", "mean_logit", "mean_logprob")
# How a word of n characters is scored from its n slot scores (stage.word_score):
#   sum: the joint log-probability (long words lose to short ones before any training);
#   mean: the mean per-character score;
#   calibrated: the joint score minus the word's score on the same pattern with the text fields emptied
#   (a content-free prior, "calibrate before use"), which removes what the pattern alone favours; the prior
#   comes from the current weights, recomputed after every update, so training cannot learn a class bias;
#   calibrated_initial: the same with the prior of the weights training starts from, computed once and kept
#   with the weights (a fixed per-word offset: the untrained cloze starts fair, training may learn a prior).
WORD_SCORES = ("sum", "mean", "calibrated", "calibrated_initial")
CALIBRATED = ("calibrated", "calibrated_initial")
# How the words of several label-word sets make one class distribution (stage.pooling):
#   words: every word of every set pooled per class by the aggregation;
#   sets: each set's own class distribution, then their mean (a set with larger word probabilities,
#   often the one with the shortest words, cannot outvote the others).
POOLINGS = ("words", "sets")


def gather_word_scores(slot_scores: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """Sum over slots of each word's per-character score.

    slot_scores: [B, L, V] (logits or log-probs at the L mask slots).
    word_ids: [W, L] (the same words for every example) or [B, W, L] (per example, e.g. chid's candidates).
    Returns [B, W].
    """
    batch, slots, _ = slot_scores.shape
    if word_ids.dim() == 2:
        word_ids = word_ids.unsqueeze(0).expand(batch, -1, -1)
    if word_ids.shape[-1] != slots:
        raise ValueError(f"words of {word_ids.shape[-1]} characters scored on {slots} mask slots")
    index = word_ids.transpose(1, 2).to(slot_scores.device)  # [B, L, W]
    return slot_scores.gather(2, index).sum(1)


def word_log_probs(slot_logits: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """log p(word) = sum over its characters of log_softmax(slot logits) at their slot. [B, W]."""
    return gather_word_scores(F.log_softmax(slot_logits.float(), dim=-1), word_ids)


def word_logits(slot_logits: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """PET's raw word score: the sum of the slot logits of its characters. [B, W]."""
    return gather_word_scores(slot_logits.float(), word_ids)


def membership(word_classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, W] one-hot matrix: entry (c, w) is 1 when word w belongs to class c."""
    return F.one_hot(word_classes.long(), num_classes).T.float()


def class_log_probs(
    word_scores: torch.Tensor, word_classes: torch.Tensor, num_classes: int, aggregation: str = "sum_prob"
) -> torch.Tensor:
    """Class log-probabilities [B, C] from word scores [B, W] and each word's class [W].

    ``word_scores`` are log p(word) for ``sum_prob`` and ``mean_logprob`` and raw word logits for
    ``mean_logit``. Every class must have at least one word.
    """
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"stage.aggregation={aggregation!r}; allowed: {list(AGGREGATIONS)}")
    member = membership(word_classes.to(word_scores.device), num_classes)  # [C, W]
    if (member.sum(1) == 0).any():
        missing = (member.sum(1) == 0).nonzero().flatten().tolist()
        raise ValueError(f"classes {missing} have no label word")
    if aggregation == "sum_prob":
        masked = word_scores.unsqueeze(1) + torch.log(member).unsqueeze(0)  # -inf off the class
        scores = torch.logsumexp(masked, dim=-1)
    else:
        scores = word_scores @ member.T / member.sum(1)
    return F.log_softmax(scores, dim=-1)


def adjusted_word_scores(
    scores: torch.Tensor, lengths: torch.Tensor, word_score: str, prior: torch.Tensor | None = None
) -> torch.Tensor:
    """Word scores [B, W] under ``word_score`` from joint scores [B, W] (sums over slots), the words'
    lengths [W] (or [B, W]) and, for ``calibrated*``, the joint scores on the content-free pattern ([W] or [B, W])."""
    if word_score not in WORD_SCORES:
        raise ConfigError(f"stage.word_score={word_score!r}; allowed: {list(WORD_SCORES)}")
    if word_score == "mean":
        return scores / lengths.to(scores.device, scores.dtype)
    if word_score in CALIBRATED:
        if prior is None:
            raise ValueError(f"word_score={word_score} needs the content-free prior")
        return scores - prior.to(scores.device, scores.dtype)
    return scores


def pooled_class_log_probs(
    word_scores: torch.Tensor,
    word_classes: torch.Tensor,
    word_sets: torch.Tensor,
    num_classes: int,
    aggregation: str = "sum_prob",
    pooling: str = "words",
) -> torch.Tensor:
    """Class log-probabilities [B, C] from the words of several sets (``word_sets`` [W]: each word's set)."""
    if pooling not in POOLINGS:
        raise ConfigError(f"stage.pooling={pooling!r}; allowed: {list(POOLINGS)}")
    if pooling == "words":
        return class_log_probs(word_scores, word_classes, num_classes, aggregation)
    per_set = [
        class_log_probs(word_scores[:, word_sets == s], word_classes[word_sets == s], num_classes, aggregation)
        for s in torch.unique(word_sets).tolist()
    ]
    return torch.logsumexp(torch.stack(per_set), dim=0) - math.log(len(per_set))  # log of the mean probability


@dataclass
class LabelWord:
    text: str
    class_index: int
    set_name: str
    token_ids: list[int]


class Verbalizer:
    """The label words of a task, validated against the tokenizer and grouped by length.

    ``tables`` maps a set name (v1, v2, ...) to {official label: [words]}; ``labels`` is the class
    order. Words are kept in one global order; ``lengths`` lists the distinct word lengths, and
    ``group(length)`` the words of that length (their token ids [W_L, L], classes and sets).
    """

    def __init__(self, tables: dict[str, dict[str, list[str]]], labels: list[str], tokenizer, task_name: str = "") -> None:
        self.task_name = task_name
        if not tables:
            raise ConfigError(f"task {task_name!r}: task.verbalizers is empty; define label-word sets v1, v2, v3")
        self.labels = list(labels)
        self.set_names = list(tables)
        self.words: list[LabelWord] = []
        owner: dict[str, tuple[str, str]] = {}
        for set_name, table in tables.items():
            where = f"task {task_name!r}: task.verbalizers.{set_name}"
            unknown = sorted(set(table) - set(self.labels))
            if unknown:
                raise ConfigError(f"{where}: unknown labels {unknown}; allowed: {self.labels}")
            for label in self.labels:
                words = table.get(label) or []
                if not words:
                    raise ConfigError(f"{where}: class {label!r} has no label word")
                for word in words:
                    if not word or not word.strip():
                        raise ConfigError(f"{where}.{label}: an empty label word")
                    if word in owner and owner[word][0] != label:
                        other_label, other_set = owner[word]
                        raise ConfigError(
                            f"{where}: the word {word!r} belongs to class {label!r} and to class {other_label!r} "
                            f"(set {other_set}); a word may name only one class"
                        )
                    owner[word] = (label, set_name)
                    ids = char_token_ids(tokenizer, word, f"{where}.{label}")
                    self.words.append(LabelWord(word, self.labels.index(label), set_name, ids))
        self.lengths = sorted({len(w.token_ids) for w in self.words})

    def select(self, set_names: list[str] | None) -> list[int]:
        """Global indices of the words of the given sets (all sets for None)."""
        names = self.set_names if set_names is None else list(set_names)
        unknown = [n for n in names if n not in self.set_names]
        if unknown:
            raise ConfigError(f"verbalizer: label-word set(s) {unknown} not defined for task {self.task_name!r}; allowed: "
                              f"fuzzy (every set), one of {self.set_names}, or a list of them")
        return [i for i, w in enumerate(self.words) if w.set_name in names]

    def group(self, length: int) -> list[int]:
        return [i for i, w in enumerate(self.words) if len(w.token_ids) == length]

    def token_ids(self, length: int) -> torch.Tensor:
        return torch.tensor([self.words[i].token_ids for i in self.group(length)], dtype=torch.long)

    @property
    def classes(self) -> torch.Tensor:
        return torch.tensor([w.class_index for w in self.words], dtype=torch.long)

    def examples(self) -> dict[str, str]:
        """The first word of each class (for showing one filled pattern per class)."""
        first: dict[str, str] = {}
        for w in self.words:
            first.setdefault(self.labels[w.class_index], w.text)
        return first


def char_token_ids(tokenizer, word: str, where: str) -> list[int]:
    """One token id per character of ``word``; a character the tokenizer does not know is an error."""
    ids = []
    for char in word:
        pieces = tokenizer(char, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1 or pieces[0] == tokenizer.unk_token_id:
            raise ConfigError(
                f"{where}: label word {word!r}: character {char!r} is not in the tokenizer's vocabulary "
                f"(it encodes as {tokenizer.convert_ids_to_tokens(pieces)}); choose another word"
            )
        ids.append(pieces[0])
    return ids
