"""Negative SPOs for the margin objective: a true triple with its subject, predicate or object replaced.

Replacements keep the type where the graph allows it (a corrupted subject is another subject of the
same predicate, a corrupted object another object of it), so negatives are hard; a candidate that
equals the positive or is itself a triple of the graph is rejected and drawn again. A graph with one
predicate cannot corrupt the predicate: that slot falls back to the next corruption in turn.
"""

from __future__ import annotations

import random

from datamodules.kg import KnowledgeGraph, Triple

CORRUPTIONS = ("subject", "predicate", "object")


def corrupt(triple: Triple, kg: KnowledgeGraph, part: str, rng: random.Random, tries: int = 16) -> Triple | None:
    """``triple`` with ``part`` replaced so that the result is not a triple of ``kg``; None if none was found."""
    if part not in CORRUPTIONS:
        raise ValueError(f"corruption part={part!r}; allowed: {list(CORRUPTIONS)}")
    s, p, o = triple
    if part == "subject":
        pool = kg.subjects_of.get(p) or kg.entity_names
    elif part == "object":
        pool = kg.objects_of.get(p) or kg.entity_names
    else:
        pool = kg.predicates
    if len(pool) < 2:
        pool = kg.entity_names if part != "predicate" else pool
    if len(pool) < 2:
        return None
    for _ in range(tries):
        pick = rng.choice(pool)
        candidate = (pick, p, o) if part == "subject" else (s, pick, o) if part == "predicate" else (s, p, pick)
        if candidate != triple and candidate not in kg.triple_set:
            return candidate
    return None


def sample_negatives(triple: Triple, kg: KnowledgeGraph, k: int, rng: random.Random) -> list[Triple]:
    """``k`` corrupted copies of ``triple``, cycling subject -> predicate -> object from a random start.

    Fewer than ``k`` come back only when the graph is too small to corrupt the triple at all.
    """
    start = rng.randrange(len(CORRUPTIONS))
    negatives: list[Triple] = []
    failures = 0
    turn = 0
    while len(negatives) < k and failures < 2 * len(CORRUPTIONS):
        part = CORRUPTIONS[(start + turn) % len(CORRUPTIONS)]
        turn += 1
        candidate = corrupt(triple, kg, part, rng)
        if candidate is None or candidate in negatives:
            failures += 1
            continue
        negatives.append(candidate)
    return negatives
