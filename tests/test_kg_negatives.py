"""Negative SPOs that a presence test of the names in the sentence cannot reject; distinct, never repeated."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from datamodules.pretraining.kg import KnowledgeGraph
from datamodules.pretraining.negatives import corrupt, sample_negatives
from lightning_modules.knowledge.heads import margin_loss

SHARED = Path(__file__).resolve().parents[2] / "shared"
TRIPLES = [
    ("高血压", "类别", "疾病"), ("头痛", "类别", "症状"), ("头痛", "义原", "疼痛"), ("阿司匹林", "治疗", "头痛"),
    ("咳嗽", "类别", "症状"), ("发热", "类别", "症状"),
]
TEXT = "他患有高血压，经常头痛。"


def presence(triple, text):
    return (triple[0] in text, triple[2] in text)


def test_hand_made_sentence_gets_exactly_the_negatives_string_matching_cannot_reject():
    kg = KnowledgeGraph(TRIPLES)
    positive = ("头痛", "类别", "症状")
    for seed in range(20):
        negatives = sample_negatives(positive, kg, 3, random.Random(seed), TEXT, ["高血压", "头痛"])
        # subject: 高血压, the other entity of the sentence; object: 疾病, the other category (症状 is not in the
        # sentence, neither is 疾病); predicate: 义原 has no object 症状, so none; swap: 症状 is not in the sentence.
        assert sorted(negatives) == [("头痛", "类别", "疾病"), ("高血压", "类别", "症状")]  # 2 < 3, never repeated
        assert all(presence(n, TEXT) == presence(positive, TEXT) for n in negatives)


def test_a_subject_replaced_by_a_true_triple_is_rejected_and_the_swap_is_used_when_both_ends_are_mentioned():
    kg = KnowledgeGraph(TRIPLES)
    # 咳嗽 类别 症状 is true: no subject negative; 疾病 is the only other category.
    assert sample_negatives(("发热", "类别", "症状"), kg, 3, random.Random(0), "病人发热三天伴咳嗽。", ["发热", "咳嗽"]) == [
        ("发热", "类别", "疾病")]
    # Both ends in the sentence, no third entity, one predicate: the reversed triple is the one negative.
    text = "阿司匹林可以缓解头痛。"
    assert sample_negatives(("阿司匹林", "治疗", "头痛"), kg, 3, random.Random(0), text, ["阿司匹林", "头痛"]) == [
        ("头痛", "治疗", "阿司匹林")]
    assert corrupt(("阿司匹林", "治疗", "头痛"), kg, "subject", random.Random(0), text, ["阿司匹林", "头痛"]) is None


def test_predicate_corruption_keeps_both_ends_in_their_slots():
    kg = KnowledgeGraph([("苹果", "义原", "水果"), ("苹果", "类别", "食物"), ("香蕉", "类别", "水果"),
                         ("苹果", "颜色", "红色")])
    # 类别: 苹果 is one of its subjects and 水果 one of its objects; 颜色 has no object 水果.
    for seed in range(10):
        assert corrupt(("苹果", "义原", "水果"), kg, "predicate", random.Random(seed), "我爱吃苹果") == ("苹果", "类别", "水果")


def test_an_absent_object_is_replaced_by_an_object_of_the_same_predicate_absent_from_the_sentence():
    kg = KnowledgeGraph([("头痛", "类别", "症状"), ("肺炎", "类别", "疾病"), ("手臂", "类别", "部位"),
                         ("头痛", "义原", "疼痛")])
    text = "头痛的症状和疾病"  # 症状 here is in the sentence: its replacement must be too -> 疾病 (a mention)
    assert corrupt(("头痛", "类别", "症状"), kg, "object", random.Random(0), text, ["头痛", "症状", "疾病"]) == (
        "头痛", "类别", "疾病")
    text = "他头痛"  # 症状 absent: another object of 类别 that is absent as well (疾病 or 部位, never 疼痛)
    found = {corrupt(("头痛", "类别", "症状"), kg, "object", random.Random(s), text, ["头痛"]) for s in range(30)}
    assert found == {("头痛", "类别", "疾病"), ("头痛", "类别", "部位")}


def test_the_margin_leaves_padded_negatives_out():
    scores = torch.tensor([[2.0, 1.5, 0.0], [0.0, 0.5, 9.0]])
    valid = torch.tensor([[True, True], [True, False]])
    # hinges: row 0: 1 - 2 + 1.5 = 0.5, 1 - 2 + 0 = 0 (-1 -> 0); row 1: 1 - 0 + 0.5 = 1.5; the 9.0 is padding.
    assert margin_loss(scores, 1.0, valid).item() == pytest.approx((0.5 + 0.0 + 1.5) / 3)
    assert margin_loss(scores, 1.0).item() == pytest.approx((0.5 + 0.0 + 1.5 + 10.0) / 4)


@pytest.mark.skipif(not (SHARED / "kg" / "HowNet.spo").is_file(), reason="../shared not found")
def test_real_sentences_negatives_are_distinct_and_keep_which_names_occur(tmp_path):
    """2,000 sentences of the shared corpus aligned with HowNet + Medical, 3 negatives asked for each."""
    from datamodules.pretraining.alignment import AlignmentRules, align
    from datamodules.pretraining.corpus import CorpusSource, read_corpus
    from datamodules.pretraining.kg import KgSource, load_kg

    sentences, _ = read_corpus(CorpusSource(files=[str(SHARED / "corpus")], fewclue_dir=str(SHARED / "fewclue")),
                               tmp_path)
    kg, given = load_kg(KgSource(files=[str(SHARED / "kg")]))
    aligned, _ = align(sentences, kg, AlignmentRules(), given)
    sample = random.Random(0).sample([a for a in aligned if a.triples], 2000)
    rng = random.Random(0)
    counts = []
    for a in sample:
        positive = a.triples[0]
        names = [n for _, _, n in a.mentions]
        negatives = sample_negatives(positive, kg, 3, rng, a.text, names)
        counts.append(len(negatives))
        assert len(set(negatives)) == len(negatives)
        for n in negatives:
            assert n not in kg.triple_set and presence(n, a.text) == presence(positive, a.text)
            changed = [j for j in range(3) if n[j] != positive[j]]
            if changed == [0] or changed == [2]:
                j = changed[0]
                # the replacement occurs in the sentence, or shares the predicate's slot (its type) with the true one
                assert n[j] in names or n[j] in (kg.subject_set_of if j == 0 else kg.object_set_of)[positive[1]]
    # Measured: 2.86 negatives per triple, 6.8% get fewer than 3, 11 none (the old sampler: always 3, but 2,305 of
    # its 6,000 negatives named a subject absent from the sentence, rejected by string matching alone).
    mean = sum(counts) / len(counts)
    assert 2.7 < mean < 3.0 and 0.03 < sum(c < 3 for c in counts) / len(counts) < 0.12
