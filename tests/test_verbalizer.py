"""Label-word scoring against hand computations, and the load-time checks of word tables and patterns."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.errors import ConfigError
from lightning_modules.scoring.patterns import PatternEncoder, parse_pattern, water_fill
from lightning_modules.scoring.verbalizer import Verbalizer, class_log_probs, word_log_probs, word_logits


def _log_softmax(row: list[float]) -> list[float]:
    z = math.log(sum(math.exp(x) for x in row))
    return [x - z for x in row]


# One example, vocabulary of 4 tokens, 2 mask slots.
SLOT_LOGITS = torch.tensor([[[1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 3.0, 1.0]]])
# Words "1,2" and "3,2" -> class 0; "0,0" -> class 1.
WORDS = torch.tensor([[1, 2], [3, 2], [0, 0]])
CLASSES = torch.tensor([0, 0, 1])


def test_multi_character_word_log_prob_is_the_sum_of_per_slot_log_probs():
    slot0, slot1 = _log_softmax([1.0, 2.0, 0.0, -1.0]), _log_softmax([0.5, 0.0, 3.0, 1.0])
    expected = [slot0[1] + slot1[2], slot0[3] + slot1[2], slot0[0] + slot1[0]]
    got = word_log_probs(SLOT_LOGITS, WORDS)[0].tolist()
    assert got == pytest.approx(expected, abs=1e-6)
    assert word_logits(SLOT_LOGITS, WORDS)[0].tolist() == pytest.approx([2.0 + 3.0, -1.0 + 3.0, 1.0 + 0.5])


def test_class_probabilities_by_hand_under_each_aggregation():
    slot0, slot1 = _log_softmax([1.0, 2.0, 0.0, -1.0]), _log_softmax([0.5, 0.0, 3.0, 1.0])
    lp = [slot0[1] + slot1[2], slot0[3] + slot1[2], slot0[0] + slot1[0]]
    logits = [5.0, 2.0, 1.5]

    def normalise(a: float, b: float) -> list[float]:
        return [a / (a + b), b / (a + b)]

    expected = {
        # Fuzzy: p(class) proportional to the sum of its words' probabilities.
        "sum_prob": normalise(math.exp(lp[0]) + math.exp(lp[1]), math.exp(lp[2])),
        # PET: softmax over classes of the mean of the word logits.
        "mean_logit": normalise(math.exp((logits[0] + logits[1]) / 2), math.exp(logits[2])),
        "mean_logprob": normalise(math.exp((lp[0] + lp[1]) / 2), math.exp(lp[2])),
    }
    for aggregation, probs in expected.items():
        scores = word_logits(SLOT_LOGITS, WORDS) if aggregation == "mean_logit" else word_log_probs(SLOT_LOGITS, WORDS)
        got = class_log_probs(scores, CLASSES, 2, aggregation).exp()[0].tolist()
        assert got == pytest.approx(probs, abs=1e-6), aggregation
    # Numbers, so a wrong formula cannot match by symmetry: p(class 0) under sum_prob.
    assert expected["sum_prob"][0] == pytest.approx(0.97204, abs=1e-4)
    assert expected["mean_logit"][0] == pytest.approx(0.88080, abs=1e-4)


def test_one_word_per_class_makes_the_three_aggregations_agree():
    words, classes = torch.tensor([[1, 2], [0, 3]]), torch.tensor([0, 1])
    logits = torch.randn(3, 2, 4)
    results = [
        class_log_probs((word_logits if a == "mean_logit" else word_log_probs)(logits, words), classes, 2, a)
        for a in ("sum_prob", "mean_logit", "mean_logprob")
    ]
    assert torch.allclose(results[0], results[1], atol=1e-5) and torch.allclose(results[0], results[2], atol=1e-5)


def test_per_example_candidates_are_scored_like_chid():
    logits = torch.randn(2, 2, 4)
    candidates = torch.tensor([[[1, 2], [0, 0]], [[3, 3], [2, 1]]])
    got = word_log_probs(logits, candidates)
    lp = torch.log_softmax(logits, -1)
    assert got[1, 1].item() == pytest.approx((lp[1, 0, 2] + lp[1, 1, 1]).item(), abs=1e-6)


def test_unknown_aggregation_names_the_key():
    with pytest.raises(ConfigError, match="stage.aggregation='max'.*sum_prob"):
        class_log_probs(torch.zeros(1, 3), CLASSES, 2, "max")


class CharTokenizer:
    """Characters of a fixed vocabulary; everything else is [UNK]."""

    unk_token_id, cls_token_id, sep_token_id, mask_token_id, pad_token_id = 1, 2, 3, 4, 0

    def __init__(self, chars: str) -> None:
        self.vocab = {c: i + 5 for i, c in enumerate(chars)}

    def __call__(self, text, add_special_tokens=False):
        if isinstance(text, list):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        return {"input_ids": [self.vocab.get(c, self.unk_token_id) for c in text]}

    def convert_ids_to_tokens(self, ids):
        return ["[UNK]" if i == 1 else "?" for i in ids]


TOKENIZER = CharTokenizer("很好差不错糟满意感觉。这个手机真的")


def test_verbalizer_groups_words_by_length_and_keeps_classes():
    tables = {"v1": {"neg": ["差"], "pos": ["很好"]}, "v2": {"neg": ["糟"], "pos": ["不错", "满意"]}}
    verbalizer = Verbalizer(tables, ["neg", "pos"], TOKENIZER)
    assert verbalizer.lengths == [1, 2]
    assert [verbalizer.words[i].text for i in verbalizer.group(2)] == ["很好", "不错", "满意"]
    assert verbalizer.token_ids(1).tolist() == [[TOKENIZER.vocab["差"]], [TOKENIZER.vocab["糟"]]]
    assert verbalizer.classes.tolist() == [0, 1, 0, 1, 1]
    assert [verbalizer.words[i].text for i in verbalizer.select(["v2"])] == ["糟", "不错", "满意"]
    with pytest.raises(ConfigError, match=r"set\(s\) \['v9'\].*allowed: fuzzy \(every set\), one of \['v1', 'v2'\]"):
        verbalizer.select(["v9"])


@pytest.mark.parametrize(
    "tables, message",
    [
        ({"v1": {"neg": ["很好"], "pos": ["很好"]}}, "'很好' belongs to class 'pos' and to class 'neg'"),
        ({"v1": {"neg": ["差"], "pos": ["很好"]}, "v2": {"neg": ["很好"], "pos": ["不错"]}}, "belongs to class 'neg' and to class 'pos'"),
        ({"v1": {"neg": [""], "pos": ["很好"]}}, "an empty label word"),
        ({"v1": {"neg": ["差劲"], "pos": ["很好"]}}, "label word '差劲': character '劲' is not in the tokenizer's vocabulary"),
        ({"v1": {"neg": ["差"]}}, "class 'pos' has no label word"),
        ({"v1": {"neg": ["差"], "pos": ["好"], "other": ["糟"]}}, r"unknown labels \['other'\]"),
    ],
)
def test_bad_word_tables_are_clear_errors(tables, message):
    with pytest.raises(ConfigError, match=message):
        Verbalizer(tables, ["neg", "pos"], TOKENIZER, "demo")


def test_pattern_without_a_mask_slot_or_with_an_unknown_field_is_an_error():
    with pytest.raises(ConfigError, match=r"needs exactly one \{mask\} slot, found 0"):
        parse_pattern("感觉。{sentence}", ["sentence"])
    with pytest.raises(ConfigError, match=r"unknown placeholder \{text\}"):
        parse_pattern("{mask}{text}", ["sentence"])


def test_water_fill_cuts_the_longest_field_first():
    assert water_fill([3, 50, 10], 30) == [3, 17, 10]
    assert water_fill([3, 5], 30) == [3, 5]
    assert sum(water_fill([40, 41], 30)) == 30


def test_truncation_keeps_pattern_text_and_masks_and_a_window_around_the_slot():
    encoder = PatternEncoder("感觉{mask}。{sentence}", TOKENIZER, ["sentence"], max_length=10)
    out = encoder.encode([{"sentence": "这个手机真的很好很好很好"}, {"sentence": "很差"}], [1, 2])
    two = out[2]
    v = TOKENIZER.vocab
    assert two["input_ids"][0].tolist() == [2, v["感"], v["觉"], 4, 4, v["。"], v["这"], v["个"], v["手"], 3]
    assert two["mask_positions"].tolist() == [[3, 4], [3, 4]]
    assert two["attention_mask"][1].tolist() == [1] * 9 + [0]
    assert out[1]["input_ids"].shape == (2, 10) and out[1]["mask_positions"].tolist() == [[3], [3]]
    chid = PatternEncoder("{left}{mask}{right}", TOKENIZER, ["left", "right"], max_length=8)
    ids = chid.encode([{"left": "这个手机真的", "right": "很好很差"}], [2])[2]["input_ids"][0].tolist()
    # Budget 8 - 2 - 2 masks = 4: two characters on each side of the slot survive.
    assert ids == [2, v["真"], v["的"], 4, 4, v["很"], v["好"], 3]


def test_encode_stacked_puts_every_mask_count_in_one_input_padded_to_the_widest():
    encoder = PatternEncoder("感觉{mask}。{sentence}", TOKENIZER, ["sentence"], max_length=12)
    rows = [{"sentence": "很好"}, {"sentence": "差"}]
    separate = encoder.encode(rows, [1, 3])
    stacked = encoder.encode_stacked(rows, [1, 3])
    v = TOKENIZER.vocab
    assert stacked["num_masks"] == [1, 3]
    # Rows 0-1: one mask, padded (masked out) to the width of the three-mask copies, rows 2-3.
    assert stacked["input_ids"].tolist() == [
        [2, v["感"], v["觉"], 4, v["。"], v["很"], v["好"], 3, 0, 0],
        [2, v["感"], v["觉"], 4, v["。"], v["差"], 3, 0, 0, 0],
        [2, v["感"], v["觉"], 4, 4, 4, v["。"], v["很"], v["好"], 3],
        [2, v["感"], v["觉"], 4, 4, 4, v["。"], v["差"], 3, 0],
    ]
    assert stacked["attention_mask"].tolist() == [[1] * 8 + [0] * 2, [1] * 7 + [0] * 3, [1] * 10, [1] * 9 + [0]]
    assert torch.equal(stacked["input_ids"][2:], separate[3]["input_ids"])
    assert torch.equal(stacked["input_ids"][:2, :8], separate[1]["input_ids"])
    assert not stacked["token_type_ids"].any()
    # A row's own slots, then its last slot again up to the longest count (never read: each group keeps its n).
    assert stacked["mask_positions"].tolist() == [[3, 3, 3], [3, 3, 3], [3, 4, 5], [3, 4, 5]]
