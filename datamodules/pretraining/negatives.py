"""Negative SPOs for the margin objective: a true triple with its subject, predicate or object replaced,
such that testing which names occur in the sentence cannot tell the negative from the positive.

The replacement of an entity slot (subject or object) depends on where the true entity is:

- it occurs in the sentence: the replacement is another entity mentioned in the sentence (those that
  fill the same slot of the same predicate first), so both triples name entities of the sentence;
- it does not: the replacement fills the same slot of the same predicate (its type in the graph:
  another object of ``类别`` is another category) and does not occur in the sentence either.

A predicate is replaced only by one under which the subject and the object both occur in their slots
(type-consistent). When both ends occur in the sentence, the reversed triple (o, p, s) is a negative too
(``swap``): the same names, the wrong direction. A candidate equal to the positive, equal to the other end, already drawn, or itself a
triple of the graph is rejected. Negatives are distinct; when a slot has no candidate left, the others are
tried in turn, and fewer than ``k`` negatives come back rather than repeats.
"""

from __future__ import annotations

import random

from datamodules.pretraining.kg import KnowledgeGraph, Triple

CORRUPTIONS = ("subject", "predicate", "object", "swap")
SLOT = {"subject": 0, "object": 2}


def candidates(
    triple: Triple, kg: KnowledgeGraph, part: str, text: str, mentioned: list[str], rng: random.Random, draws: int = 32,
) -> list[str]:
    """Replacements for ``part`` of ``triple`` in sentence ``text`` (mentioning the entities ``mentioned``), in the
    order to try them."""
    if part not in CORRUPTIONS:
        raise ValueError(f"corruption part={part!r}; allowed: {list(CORRUPTIONS)}")
    s, p, o = triple
    if part == "swap":
        return [s] if s != o and s in text and o in text else []
    if part == "predicate":
        pool = [q for q in kg.predicates_of_subject(s) if q != p and o in kg.object_set_of[q]]
        rng.shuffle(pool)
        return pool
    slot = SLOT[part]
    true, other = triple[slot], triple[2 - slot]
    same_type = kg.subject_set_of[p] if slot == 0 else kg.object_set_of[p]
    if true in text:
        pool = [m for m in dict.fromkeys(mentioned) if m not in (true, other) and m in text]
        rng.shuffle(pool)
        return sorted(pool, key=lambda m: m not in same_type)  # stable: same-type entities first, shuffled
    names = kg.subjects_of[p] if slot == 0 else kg.objects_of[p]
    # A large slot (thousands of sememes) is sampled, not scanned.
    picks = rng.sample(names, min(draws, len(names)))
    return [m for m in dict.fromkeys(picks) if m not in (true, other) and m not in text]


def corrupt(triple: Triple, kg: KnowledgeGraph, part: str, rng: random.Random, text: str = "",
            mentioned: list[str] = ()) -> Triple | None:
    """One negative with ``part`` replaced (see the module docstring), or None if there is none."""
    found = sample_negatives(triple, kg, 1, rng, text, list(mentioned), parts=(part,))
    return found[0] if found else None


def sample_negatives(
    triple: Triple,
    kg: KnowledgeGraph,
    k: int,
    rng: random.Random,
    text: str,
    mentioned: list[str],
    parts: tuple[str, ...] = CORRUPTIONS,
) -> list[Triple]:
    """Up to ``k`` distinct negatives of ``triple`` for sentence ``text``, cycling through ``parts`` from a random
    start; a part whose candidates run out is skipped."""
    pools = {part: iter(candidates(triple, kg, part, text, mentioned, rng)) for part in parts}
    order = list(parts)
    start = rng.randrange(len(order))
    order = order[start:] + order[:start]
    negatives: list[Triple] = []
    while len(negatives) < k and order:
        for part in list(order):
            if len(negatives) >= k:
                break
            negative = _next_negative(triple, kg, part, pools[part], negatives)
            if negative is None:
                order.remove(part)
            else:
                negatives.append(negative)
    return negatives


def _next_negative(triple: Triple, kg: KnowledgeGraph, part: str, pool, taken: list[Triple]) -> Triple | None:
    index = 1 if part == "predicate" else SLOT.get(part)
    for pick in pool:
        if part == "swap":
            candidate = (triple[2], triple[1], triple[0])
        else:
            candidate = tuple(pick if j == index else x for j, x in enumerate(triple))
        if candidate != triple and candidate not in kg.triple_set and candidate not in taken:
            return candidate
    return None
