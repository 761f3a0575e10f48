"""Cloze patterns: fill ``{field}`` placeholders, put n [MASK] tokens at ``{mask}``, truncate, encode.

A pattern is text from ``conf/task/<task>.yaml`` such as ``"感觉{mask}。{sentence}"``. Encoding
keeps the pattern's own text and the mask slots whole and cuts only the row's text fields:
the longest ones first (water-filling), so short fields (cluewsc's spans) survive. Fields named in
``keep_end`` (chid's ``left``) lose their beginning instead of their end, which keeps a window
around the mask slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from datamodules.errors import ConfigError, DataError

PLACEHOLDER = re.compile(r"\{(\w+)\}")
MASK = "mask"


@dataclass
class Segment:
    kind: str  # "text" | "field" | "mask"
    value: str


def parse_pattern(template: str, allowed_fields: list[str], where: str = "pattern") -> list[Segment]:
    """Split a pattern into literal text, field placeholders (at least one) and exactly one mask slot."""
    segments: list[Segment] = []
    position = 0
    for match in PLACEHOLDER.finditer(template):
        if match.start() > position:
            segments.append(Segment("text", template[position : match.start()]))
        name = match.group(1)
        if name == MASK:
            segments.append(Segment("mask", name))
        elif name in allowed_fields:
            segments.append(Segment("field", name))
        else:
            raise ConfigError(f"{where} {template!r}: unknown placeholder {{{name}}}; allowed: {['mask', *allowed_fields]}")
        position = match.end()
    if position < len(template):
        segments.append(Segment("text", template[position:]))
    masks = sum(s.kind == "mask" for s in segments)
    if masks != 1:
        raise ConfigError(f"{where} {template!r}: needs exactly one {{mask}} slot, found {masks}")
    if not any(s.kind == "field" for s in segments):
        raise ConfigError(f"{where} {template!r}: no text placeholder, so the cloze never sees the row; "
                          f"need at least one of {['{' + name + '}' for name in allowed_fields]}")
    return segments


def water_fill(lengths: list[int], budget: int) -> list[int]:
    """Lengths to keep so that their sum fits ``budget``, cutting the longest first."""
    if sum(lengths) <= budget:
        return list(lengths)
    low, high = 0, max(lengths)
    while low < high:  # largest cap with sum(min(n, cap)) <= budget
        cap = (low + high + 1) // 2
        if sum(min(n, cap) for n in lengths) <= budget:
            low = cap
        else:
            high = cap - 1
    kept = [min(n, low) for n in lengths]
    spare = budget - sum(kept)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if spare == 0:
            break
        if lengths[i] > kept[i]:
            kept[i] += 1
            spare -= 1
    return kept


def slot_neighbours(template: str, allowed: list[str]) -> tuple[str, str]:
    """The pattern characters right before and right after the mask slot ("" next to a field or an end)."""
    segments = parse_pattern(template, allowed)
    slot = next(i for i, s in enumerate(segments) if s.kind == "mask")
    before = segments[slot - 1].value[-1:] if slot > 0 and segments[slot - 1].kind == "text" else ""
    after = segments[slot + 1].value[:1] if slot + 1 < len(segments) and segments[slot + 1].kind == "text" else ""
    return before, after


def doubles_at_slot(word: str, before: str, after: str) -> bool:
    """True when ``word`` repeats the pattern character next to the slot (关系是 + 是的 -> 关系是是的)."""
    return bool(word) and ((before != "" and word[0] == before) or (after != "" and word[-1] == after))


def reading_problems(task) -> list[str]:
    """Every (pattern, set, class, word) that cannot read as Chinese: an empty word, or a character doubled
    across the slot boundary (关系是 + 是的 -> 关系是是的)."""
    problems = []
    for i, template in enumerate(task.patterns):
        before, after = slot_neighbours(template, allowed_fields(task))
        for set_name, table in task.verbalizers_for(i).items():
            for label, words in table.items():
                for word in words:
                    where = f"task {task.name}: pattern {i} {template!r}, set {set_name}, class {label}"
                    if not word.strip():
                        problems.append(f"{where}: an empty word")
                    elif doubles_at_slot(word, before, after):
                        problems.append(f"{where}: {word!r} doubles a character at the slot ({before}[{word}]{after})")
    return problems


class PatternEncoder:
    """Encodes rows into ``[CLS] pattern-with-n-masks [SEP]`` for several n at once."""

    def __init__(
        self,
        template: str,
        tokenizer,
        allowed_fields: list[str],
        max_length: int = 256,
        keep_end: tuple[str, ...] = ("left",),
        where: str = "task.patterns",
    ) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.keep_end = keep_end
        self.segments = parse_pattern(template, allowed_fields, where)
        self.fields = [s.value for s in self.segments if s.kind == "field"]
        self.literal_ids = {
            i: tokenizer(s.value, add_special_tokens=False)["input_ids"]
            for i, s in enumerate(self.segments)
            if s.kind == "text"
        }
        self.literal_length = sum(len(ids) for ids in self.literal_ids.values())
        # Token ids of every field text seen: each text is tokenised once, not once per epoch.
        self._token_ids: dict[str, list[int]] = {}

    def fill(self, fields: dict[str, str], mask_text: str) -> str:
        """The pattern as text, with ``mask_text`` in the mask slot (for showing examples)."""
        return "".join(
            mask_text if s.kind == "mask" else fields[s.value] if s.kind == "field" else s.value for s in self.segments
        )

    def encode(self, rows_fields: list[dict[str, str]], num_masks: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        """For each n in ``num_masks`` its own input: input_ids, attention_mask, token_type_ids [B, T_n] and
        mask_positions [B, n] (one forward pass each; ``encode_stacked`` makes one input of them all)."""
        field_ids = self.field_token_ids(rows_fields)
        return {n: self._tensors(*self._sequences(field_ids, len(rows_fields), n), n) for n in num_masks}

    def encode_stacked(self, rows_fields: list[dict[str, str]], num_masks: list[int]) -> dict:
        """Every n in ``num_masks`` in ONE input, for one forward pass: the B rows with num_masks[0] masks, then the
        B rows with num_masks[1], ... stacked along the batch dimension and padded to the widest, [K*B, T]. A row's
        padding is masked out of attention, so its hidden states are those of its own group's input; mask_positions
        [K*B, max n] repeats a row's last slot past its n; ``num_masks`` says which group has how many slots."""
        field_ids = self.field_token_ids(rows_fields)
        longest = max(num_masks)
        sequences, positions = [], []
        for n in num_masks:
            group, slots = self._sequences(field_ids, len(rows_fields), n)
            sequences += group
            positions += [row + row[-1:] * (longest - n) for row in slots]
        return {**self._tensors(sequences, positions, longest), "num_masks": list(num_masks)}

    def field_token_ids(self, rows_fields: list[dict[str, str]]) -> dict[str, list[list[int]]]:
        return {name: self.token_ids([str(f[name]) for f in rows_fields]) for name in dict.fromkeys(self.fields)}

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """The token ids of each text (no special tokens), from the cache; new texts in one tokenizer call."""
        new = list(dict.fromkeys(t for t in texts if t not in self._token_ids))
        if new:
            self._token_ids.update(zip(new, self.tokenizer(new, add_special_tokens=False)["input_ids"]))
        return [self._token_ids[t] for t in texts]

    def _sequences(self, field_ids: dict[str, list[list[int]]], batch: int, n: int) -> tuple[list[list[int]], list[list[int]]]:
        """The token ids of each row with n masks, and the positions of its masks."""
        budget = self.max_length - 2 - self.literal_length - n
        if budget < 0:
            raise ConfigError(
                f"stage.max_length={self.max_length} is too short for pattern {self.template!r} with {n} masks "
                f"(it needs {self.max_length - budget})"
            )
        tok = self.tokenizer
        sequences, positions = [], []
        for row in range(batch):
            pieces = [field_ids[s.value][row] for s in self.segments if s.kind == "field"]
            kept = iter(water_fill([len(p) for p in pieces], budget))
            ids = [tok.cls_token_id]
            mask_at: list[int] = []
            for i, segment in enumerate(self.segments):
                if segment.kind == "text":
                    ids += self.literal_ids[i]
                elif segment.kind == "mask":
                    mask_at = list(range(len(ids), len(ids) + n))
                    ids += [tok.mask_token_id] * n
                else:
                    piece, keep = field_ids[segment.value][row], next(kept)
                    ids += (piece[len(piece) - keep :] if segment.value in self.keep_end else piece[:keep])
            ids.append(tok.sep_token_id)
            sequences.append(ids)
            positions.append(mask_at)
        return sequences, positions

    def _tensors(self, sequences: list[list[int]], positions: list[list[int]], n: int) -> dict[str, torch.Tensor]:
        """The rows right-padded to the longest: input_ids, attention_mask, token_type_ids [B, T], mask_positions [B, n]."""
        tok = self.tokenizer
        rows = len(sequences)
        width = max((len(s) for s in sequences), default=0)
        input_ids = torch.full((rows, width), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros((rows, width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "token_type_ids": torch.zeros_like(input_ids),
            "mask_positions": torch.tensor(positions, dtype=torch.long).view(rows, n),
        }


def allowed_fields(task) -> list[str]:
    """The placeholders a task's patterns may use besides {mask}."""
    extra = {"span_pair": ["span1", "span2", "text_marked"], "multiple_choice": ["left", "right"]}.get(task.kind, [])
    return [*task.text_fields, *extra]


def candidate_ids(tokenizer, rows, where: str = "") -> torch.Tensor:
    """chid: the characters of every candidate idiom as token ids [B, C, n] (one token per character)."""
    out = []
    for row in rows:
        candidates = row.fields["candidates"]
        lengths = {len(c) for c in candidates}
        if len(lengths) != 1:
            raise DataError(f"{row.path}:{row.line}: field 'candidates' mixes lengths {sorted(lengths)}; expected one")
        out.append([tokenizer.convert_tokens_to_ids(list(c.lower())) for c in candidates])
    if len({len(r[0]) for r in out}) != 1:
        # Rows with idioms of different lengths are scored apart; FewCLUE's chid has only 4-character idioms.
        raise DataError(f"{where}candidate idioms of different lengths in one batch; expected 4 characters each")
    return torch.tensor(out, dtype=torch.long)
