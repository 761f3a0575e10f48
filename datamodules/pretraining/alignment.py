"""Distant supervision: KG entity mentions in corpus sentences, and the triples each sentence gets.

One Aho–Corasick automaton (pyahocorasick) holds every entity name, so matching costs one pass over
the text whatever the size of the graph (millions of names are fine). The noise rule, in order:

1. a name is indexed only if it has at least ``min_chars`` characters, at most ``max_chars``, and
   contains a CJK character or a letter (pure digits/punctuation such as ``...`` or ``2016`` never match);
2. stop-entities: a name found in more than ``max_sentence_ratio`` of the sentences, and in more
   than ``min_stop_sentences`` of them, is too generic to link (HowNet's 我们, 没有, 质量) and is dropped;
3. overlaps: the longest match wins, then the leftmost; a name nested in or overlapping a longer
   match is not a mention;
4. pairs: a triple pairs with a sentence when its subject is mentioned, or (``match_objects``) when
   its object is mentioned and that object is specific (at most ``max_object_degree`` triples) — a
   hub object such as 疾病 (7,392 diseases point to it) mentioned alone is ambiguous and pairs with
   nothing; triples whose subject and object are both mentioned come first;
5. caps: at most ``max_mentions_per_sentence`` mentions, ``max_triples_per_mention`` triples per
   mention and ``max_triples_per_sentence`` triples per sentence.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import ahocorasick

from datamodules.pretraining.kg import KnowledgeGraph, Triple
from datamodules.errors import ConfigError

log = logging.getLogger(__name__)

NAME_CHARACTER = re.compile(r"[\u3400-\u9fffA-Za-z]")

Mention = tuple[int, int, str]  # character start, end (exclusive), entity name

# Mention lengths (characters) by which masking is measured (kg/mention_mask_rate/<bucket>).
MENTION_BUCKETS = ((1, 2, "1-2"), (3, 4, "3-4"), (5, 8, "5-8"), (9, None, "9+"))


def mention_bucket(chars: int) -> str:
    for low, high, name in MENTION_BUCKETS:
        if chars >= low and (high is None or chars <= high):
            return name
    raise ValueError(f"a mention of {chars} characters")


@dataclass
class AlignmentRules:
    """The stated noise rule (``data.alignment``); see the module docstring."""

    min_chars: int = 2
    max_chars: int = 32
    max_sentence_ratio: float = 0.002
    min_stop_sentences: int = 50
    match_objects: bool = True
    max_object_degree: int = 0
    max_mentions_per_sentence: int = 16
    max_triples_per_mention: int = 4
    max_triples_per_sentence: int = 8

    def __post_init__(self) -> None:
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise ConfigError(f"data.alignment.min_chars={self.min_chars}, max_chars={self.max_chars}: "
                             "need 1 <= min_chars <= max_chars")
        if not 0.0 < self.max_sentence_ratio <= 1.0:
            raise ConfigError(f"data.alignment.max_sentence_ratio={self.max_sentence_ratio}; allowed: (0, 1]")


@dataclass(slots=True)
class AlignedSentence:
    """A sentence, its KG mentions (character spans) and the triples paired with it."""

    text: str
    mentions: list[Mention] = field(default_factory=list)
    triples: list[Triple] = field(default_factory=list)


def valid_name(name: str, rules: AlignmentRules) -> bool:
    return rules.min_chars <= len(name) <= rules.max_chars and NAME_CHARACTER.search(name) is not None


class EntityMatcher:
    """All occurrences of the indexed names in a text, with one Aho–Corasick automaton."""

    def __init__(self, names: list[str], rules: AlignmentRules) -> None:
        self.automaton = ahocorasick.Automaton()
        count = 0
        for name in names:
            if valid_name(name, rules) and self.automaton.add_word(name, name):
                count += 1
        self.size = count
        if count:
            self.automaton.make_automaton()

    def find(self, text: str) -> list[Mention]:
        if not self.size:
            return []
        return [(end + 1 - len(name), end + 1, name) for end, name in self.automaton.iter(text)]


def longest_non_overlapping(matches: list[Mention], skip: set[str] | frozenset[str] = frozenset()) -> list[Mention]:
    """Longest first, then leftmost; a match that overlaps an accepted one is dropped. Sorted by start."""
    taken: list[Mention] = []
    for start, end, name in sorted(matches, key=lambda m: (m[0] - m[1], m[0])):
        if name in skip:
            continue
        if all(end <= s or start >= e for s, e, _ in taken):
            taken.append((start, end, name))
    return sorted(taken)


def sentence_triples(mentions: list[Mention], kg: KnowledgeGraph, rules: AlignmentRules) -> list[Triple]:
    """The triples paired with a sentence whose mentions are ``mentions`` (rules 4 and 5)."""
    mentioned = {name for _, _, name in mentions}
    chosen: dict[Triple, None] = {}
    for name in dict.fromkeys(name for _, _, name in mentions):
        indices = list(kg.by_subject.get(name, ()))
        if rules.match_objects and len(kg.by_object.get(name, ())) <= rules.max_object_degree:
            indices += [i for i in kg.by_object.get(name, ()) if kg.triples[i][0] != name]
        candidates = [kg.triples[i] for i in indices]
        # Both ends in the sentence first (the strongest distant supervision), file order otherwise.
        candidates.sort(key=lambda t: not (t[0] in mentioned and t[2] in mentioned))
        added = 0
        for triple in candidates:
            if added >= rules.max_triples_per_mention or len(chosen) >= rules.max_triples_per_sentence:
                break
            if triple not in chosen:
                chosen[triple] = None
                added += 1
    return list(chosen)


def locate(text: str, triples: list[Triple], rules: AlignmentRules) -> AlignedSentence:
    """A sentence that comes with its triples (DuIE): mentions are the first occurrences of their ends."""
    found: list[Mention] = []
    for s, _, o in triples:
        for name in (s, o):
            start = text.find(name)
            if start >= 0:
                found.append((start, start + len(name), name))
    mentions = longest_non_overlapping(list(dict.fromkeys(found)))[: rules.max_mentions_per_sentence]
    return AlignedSentence(text, mentions, list(dict.fromkeys(triples))[: rules.max_triples_per_sentence])


def align(
    sentences: list[str],
    kg: KnowledgeGraph,
    rules: AlignmentRules,
    given: list[tuple[str, list[Triple]]] = (),
) -> tuple[list[AlignedSentence], dict[str, float]]:
    """Aligned sentences (corpus sentences first, then ``given`` DuIE sentences) and the statistics."""
    started = time.perf_counter()
    names = kg.names() if rules.match_objects else list(kg.by_subject)
    matcher = EntityMatcher(names, rules)

    # Pass 1: in how many sentences does each name occur (the stop-entity rule needs the whole corpus).
    frequency: Counter[str] = Counter()
    raw: list[list[Mention]] = []
    for text in sentences:
        matches = matcher.find(text)
        raw.append(matches)
        frequency.update({name for _, _, name in matches})
    cap = max(rules.max_sentence_ratio * len(sentences), rules.min_stop_sentences)
    stop = {name for name, n in frequency.items() if n > cap}

    # Pass 2: mentions and triples per sentence.
    aligned: list[AlignedSentence] = []
    for text, matches in zip(sentences, raw):
        mentions = longest_non_overlapping(matches, stop)[: rules.max_mentions_per_sentence]
        aligned.append(AlignedSentence(text, mentions, sentence_triples(mentions, kg, rules)))
    del raw
    aligned += [locate(text, triples, rules) for text, triples in given]

    stats = alignment_stats(aligned)
    stats.update({
        "kg/triples": float(len(kg)),
        "kg/names_indexed": float(matcher.size),
        "kg/stop_entities": float(len(stop)),
        "kg/align_seconds": round(time.perf_counter() - started, 3),
    })
    log.info("alignment: %s", ", ".join(f"{k}={v:g}" for k, v in stats.items()))
    return aligned, stats


def alignment_stats(aligned: list[AlignedSentence]) -> dict[str, float]:
    """kg/aligned_pairs (sentence-SPO pairs), kg/coverage (share of sentences with a triple),
    kg/triples_per_sentence (over the sentences that have one), and mention counts."""
    with_triples = sum(1 for a in aligned if a.triples)
    pairs = sum(len(a.triples) for a in aligned)
    mentions = sum(len(a.mentions) for a in aligned)
    return {
        "kg/sentences": float(len(aligned)),
        "kg/aligned_sentences": float(with_triples),
        "kg/aligned_pairs": float(pairs),
        "kg/coverage": round(with_triples / len(aligned), 4) if aligned else 0.0,
        "kg/triples_per_sentence": round(pairs / with_triples, 3) if with_triples else 0.0,
        "kg/mentions": float(mentions),
        "kg/entities_mentioned": float(len({name for a in aligned for _, _, name in a.mentions})),
    }
