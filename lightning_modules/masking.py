"""Masked-LM corruption and mention tags, per sequence.

``choose_positions`` picks about ``mask_prob`` of the maskable tokens; KG mentions given as token
spans are whole-word units (ERNIE's entity-level masking): a mention is masked whole with
probability ``span_prob`` while the budget allows, and its tokens are never masked one by one;
the rest of the budget goes to single tokens outside mentions. ``corrupt`` applies BERT's 80/10/10
rule (``[MASK]`` / a random token / unchanged) and returns the labels (-100 where nothing is predicted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
            start, end = spans[i]
            tokens = [t for t in range(start, end) if t in allowed]
            if tokens and draws[i] < span_prob and len(chosen) + len(tokens) <= budget:
                chosen.update(tokens)
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
    """O/B/I (0/1/2) per token for mention ``spans``; -100 on tokens outside ``maskable`` (special, padding)."""
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
    return MaskedBatch(inputs, labels, all_spans, all_names, all_maskable)
