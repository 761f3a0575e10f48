"""Masked-LM corruption and mention tags, per sequence.

``choose_positions`` picks about ``mask_prob`` of the maskable tokens; KG mentions given as token
spans are whole-word units (ERNIE's entity-level masking). Mentions are visited in random order;
each is drawn with probability ``span_prob`` and a drawn mention is masked whole while the budget
(round(``mask_prob`` x tokens)) is not used up *before its turn*: the last one may overshoot it, so a
mention longer than the budget is masked as often as a short one (its chance does not depend on its
own length). Mention tokens are never masked one by one; the rest of the budget goes to single
tokens outside mentions. ``corrupt`` applies BERT's 80/10/10 rule (``[MASK]`` / a random token /
unchanged) and returns the labels (IGNORE where nothing is predicted). ``mention_mask_rates`` measures
the share of mentions masked whole, per mention length. ``joint_units`` is the rule of the
sentence-SPO joint masking (no copy path between the sentence and the triple).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from datamodules.pretraining.alignment import MENTION_BUCKETS, mention_bucket

# The label of a position without a loss (cross_entropy's default ignore_index): one constant for every stage.
IGNORE = -100
BIO = {"O": 0, "B": 1, "I": 2}


def choose_positions(
    candidates: list[int],
    spans: list[tuple[int, int]],
    mask_prob: float,
    span_prob: float,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Sorted positions to mask among ``candidates`` (token positions), mentions ``spans`` whole."""
    if not candidates:
        return []
    budget = max(1, round(mask_prob * len(candidates)))
    allowed = set(candidates)
    chosen: set[int] = set()
    inside: set[int] = set()
    for start, end in spans:
        inside.update(range(start, end))
    if spans and span_prob > 0:
        order = torch.randperm(len(spans), generator=generator).tolist()
        draws = torch.rand(len(spans), generator=generator).tolist()
        for i in order:
            if len(chosen) >= budget:
                break
            start, end = spans[i]
            tokens = [t for t in range(start, end) if t in allowed]
            if tokens and draws[i] < span_prob:
                chosen.update(tokens)  # whole, even past the budget: long mentions are not left out
    rest = [t for t in candidates if t not in inside]
    for i in torch.randperm(len(rest), generator=generator).tolist():
        if len(chosen) >= budget:
            break
        chosen.add(rest[i])
    return sorted(chosen)


def corrupt(
    input_ids: torch.Tensor,
    positions: list[int],
    mask_token_id: int,
    random_ids: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted ids, labels) for one 1-D sequence; ``random_ids`` are the tokens a random replacement draws from."""
    ids = input_ids.clone()
    labels = torch.full_like(input_ids, IGNORE)
    if not positions:
        return ids, labels
    where = torch.tensor(positions, dtype=torch.long)
    labels[where] = input_ids[where]
    draw = torch.rand(len(positions), generator=generator)
    replace = torch.randint(len(random_ids), (len(positions),), generator=generator)
    ids[where[draw < 0.8]] = mask_token_id
    swap = (draw >= 0.8) & (draw < 0.9)
    ids[where[swap]] = random_ids[replace[swap]]
    return ids, labels


def bio_tags(length: int, spans: list[tuple[int, int]], maskable: list[int]) -> torch.Tensor:
    """O/B/I (0/1/2) per token for mention ``spans``; IGNORE on tokens outside ``maskable`` (special, padding)."""
    tags = torch.full((length,), IGNORE, dtype=torch.long)
    if maskable:
        tags[torch.tensor(maskable, dtype=torch.long)] = BIO["O"]
    for start, end in spans:
        tags[start] = BIO["B"]
        if end - start > 1:
            tags[start + 1 : end] = BIO["I"]
    return tags


def token_span(encoding, row: int, start: int, end: int, sequence: int = 0) -> tuple[int, int] | None:
    """Token span [first, last + 1) covering characters [start, end) of sequence ``sequence``; None if truncated."""
    first = encoding.char_to_token(row, start, sequence_index=sequence)
    last = encoding.char_to_token(row, end - 1, sequence_index=sequence)
    if first is None or last is None:
        return None
    return first, last + 1


def maskable_positions(special_tokens_mask: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """Positions that are real text (not [CLS]/[SEP]/padding)."""
    keep = (special_tokens_mask == 0) & (attention_mask == 1)
    return keep.nonzero().flatten().tolist()


def generator_for(seed: int | None) -> torch.Generator | None:
    """A seeded generator for fixed (validation) masks; None draws from the global, seed_everything'd RNG."""
    return None if seed is None else torch.Generator().manual_seed(int(seed))


@dataclass
class MaskedBatch:
    """Tokenised texts with masked-LM corruption; ``spans`` are the mention token spans per row."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    spans: list[list[tuple[int, int]]]
    span_names: list[list[str]]
    maskable: list[list[int]]
    # The token ids before corruption (what the mention tagger reads).
    original_ids: torch.Tensor

    def plain_inputs(self) -> dict[str, torch.Tensor]:
        """The same inputs with nothing masked."""
        return {**self.inputs, "input_ids": self.original_ids}

    def mention_tokens(self) -> torch.Tensor:
        """[B, T] True on the tokens of a mention."""
        inside = torch.zeros_like(self.labels, dtype=torch.bool)
        for row, spans in enumerate(self.spans):
            for start, end in spans:
                inside[row, start:end] = True
        return inside


def mask_texts(
    tokenizer,
    texts: list[str],
    mentions: list[list[tuple[int, int, str]]],
    seeds: list[int | None],
    random_ids: torch.Tensor,
    max_length: int = 128,
    mask_prob: float = 0.15,
    span_prob: float = 0.0,
) -> MaskedBatch:
    """Tokenise ``texts`` and mask ~``mask_prob`` of each; mentions are whole-word units when ``span_prob`` > 0."""
    encoding = tokenizer(
        texts, truncation=True, max_length=max_length, padding=True,
        return_special_tokens_mask=True, return_tensors="pt",
    )
    special = encoding.pop("special_tokens_mask")
    input_ids = encoding["input_ids"].clone()
    labels = torch.full_like(input_ids, IGNORE)
    all_spans, all_names, all_maskable = [], [], []
    for row, (text_mentions, seed) in enumerate(zip(mentions, seeds)):
        generator = generator_for(seed)
        maskable = maskable_positions(special[row], encoding["attention_mask"][row])
        spans, names = [], []
        for start, end, name in text_mentions:
            span = token_span(encoding, row, start, end)
            if span is not None:
                spans.append(span)
                names.append(name)
        positions = choose_positions(maskable, spans if span_prob > 0 else [], mask_prob, span_prob, generator)
        input_ids[row], labels[row] = corrupt(
            encoding["input_ids"][row], positions, tokenizer.mask_token_id, random_ids, generator
        )
        all_spans.append(spans)
        all_names.append(names)
        all_maskable.append(maskable)
    inputs = {key: value for key, value in encoding.items()}
    inputs["input_ids"] = input_ids
    return MaskedBatch(inputs, labels, all_spans, all_names, all_maskable, encoding["input_ids"])


def mention_accuracy(
    predicted: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, mention_tokens: torch.Tensor
) -> torch.Tensor | None:
    """Accuracy of the masked-LM predictions (``predicted``/``targets``, in the order of the labelled positions
    of ``labels``) on the labelled tokens that lie inside a mention; None when no mention token is masked."""
    inside = mention_tokens[labels != IGNORE]
    if not inside.any():
        return None
    return (predicted[inside] == targets[inside]).float().mean()


# -- how often mentions are masked whole ----------------------------------------------------------
def mention_mask_rates(
    tokenizer,
    texts: list[str],
    mentions: list[list[tuple[int, int, str]]],
    random_ids: torch.Tensor,
    max_length: int,
    mask_prob: float,
    span_prob: float,
    repeats: int = 5,
    seed: int = 0,
    batch_size: int = 256,
    bucket_weights: dict[str, int] | None = None,
) -> dict[str, float | None]:
    """The share of mentions that ``mask_texts`` masks whole (every token labelled), per mention length in
    characters and overall, over ``repeats`` seeded maskings of each text; ``kg/mask_ratio`` is the share of
    text tokens masked. A bucket without mentions is None. With ``bucket_weights`` (mentions per bucket in the
    corpus) the overall rate is the bucket rates weighted by them, for a sample stratified by length."""
    total: dict[str, int] = {name: 0 for _, _, name in MENTION_BUCKETS}
    whole: dict[str, int] = dict(total)
    masked_tokens = text_tokens = 0
    for repeat in range(repeats):
        for first in range(0, len(texts), batch_size):
            rows = range(first, min(first + batch_size, len(texts)))
            seeds = [seed + repeat * len(texts) + i for i in rows]
            batch = mask_texts(tokenizer, [texts[i] for i in rows], [mentions[i] for i in rows], seeds, random_ids,
                               max_length, mask_prob, span_prob)
            labelled = batch.labels != IGNORE
            masked_tokens += int(labelled.sum())
            text_tokens += sum(len(m) for m in batch.maskable)
            for row, (spans, names) in enumerate(zip(batch.spans, batch.span_names)):
                for (start, end), name in zip(spans, names):
                    bucket = mention_bucket(len(name))
                    total[bucket] += 1
                    whole[bucket] += bool(labelled[row, start:end].all())
    count = sum(total.values())
    overall = sum(whole.values()) / count if count else None
    if bucket_weights is not None and count:
        weights = {b: w for b, w in bucket_weights.items() if total.get(b)}
        overall = sum(w * whole[b] / total[b] for b, w in weights.items()) / sum(weights.values())
    rates: dict[str, float | None] = {"kg/mention_mask_rate": None if overall is None else round(overall, 4)}
    for _, _, name in MENTION_BUCKETS:
        rates[f"kg/mention_mask_rate/{name}"] = round(whole[name] / total[name], 4) if total[name] else None
    rates["kg/mention_mask_mentions"] = float(count)
    rates["kg/mask_ratio"] = round(masked_tokens / text_tokens, 4) if text_tokens else None
    return rates


# -- sentence-SPO joint masking -------------------------------------------------------------------
def occurrences(text: str, name: str) -> list[tuple[int, int]]:
    """Character spans of every non-overlapping occurrence of ``name`` in ``text``, left to right."""
    found: list[tuple[int, int]] = []
    start = text.find(name) if name else -1
    while start >= 0:
        found.append((start, start + len(name)))
        start = text.find(name, start + len(name))
    return found


@dataclass
class JointUnits:
    """Character spans of one ``sentence`` / ``s p o`` pair: ``hidden_*`` are masked whole (every occurrence of
    the hidden element, in the sentence and in the segment); ``visible_text`` are the sentence's occurrences of
    the elements left visible in the segment, which background masking must not touch (they would be copies)."""

    hidden: str
    hidden_text: list[tuple[int, int]]
    hidden_segment: list[tuple[int, int]]
    visible_text: list[tuple[int, int]]


def segment_text(triple: tuple[str, str, str]) -> str:
    """The knowledge segment of a sentence-SPO pair: ``s p o``."""
    return " ".join(triple)


def joint_units(text: str, triple: tuple[str, str, str], part: int) -> JointUnits:
    """The joint-masking rule: element ``part`` (0 s, 1 p, 2 o) of ``triple`` is hidden everywhere it occurs in
    the pair, so no masked token can be read off an unmasked copy: its slot in the segment and every occurrence of
    its string in the sentence and in the segment are masked together. An element whose string lies inside the
    hidden one (o = 血压 in s = 高血压) is hidden with it, or it would show part of the answer."""
    hidden = triple[part]
    names = [name for j, name in enumerate(triple) if j == part or name in hidden]
    segment = segment_text(triple)
    in_text: set[tuple[int, int]] = set()
    in_segment: set[tuple[int, int]] = set()
    for j, name in enumerate(triple):
        if name in names:
            slot_start = sum(len(x) + 1 for x in triple[:j])
            in_segment.add((slot_start, slot_start + len(name)))
    for name in names:
        in_text.update(occurrences(text, name))
        in_segment.update(occurrences(segment, name))
    visible: set[tuple[int, int]] = set()
    for name in triple:
        if name not in names:
            visible.update(occurrences(text, name))
    return JointUnits(hidden, sorted(in_text), sorted(in_segment), sorted(visible))
