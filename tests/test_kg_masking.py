"""Knowledge masking: every mention can be masked whole, tags come from the unmasked sentence, joint masking has no
copy path between the sentence and its triple. Hand-made sentences with known mentions; one real-data measurement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules.pretraining.alignment import AlignmentRules, align, mention_bucket
from datamodules.pretraining.kg import KnowledgeGraph
from datamodules.pretraining.aligned_corpus import AlignedDataset, PretrainRow
from lightning_modules.encoders.char_vocab import char_tokenizer
from lightning_modules.knowledge.masking import (
    IGNORE,
    choose_positions,
    joint_units,
    mention_mask_rates,
)
from tests.helpers import stage_module
from tests.test_kgbert import SENTENCES, TRIPLES, tiny_masked_lm

SHARED = Path(__file__).resolve().parents[2] / "shared"
TEXT = "他患有高血压，经常头痛。"  # 他0 患1 有2 高3 血4 压5 ，6 经7 常8 头9 痛10 。11; token = character + 1 ([CLS])


@pytest.fixture
def tokenizer(tmp_path):
    names = [n for t in TRIPLES for n in t]
    return char_tokenizer([*SENTENCES, *names, "高血压义原血压", "一二三四五六七八九十"], tmp_path / "cache")


# -- item 1: masking that reaches every mention ---------------------------------------------------------
def test_a_mention_longer_than_the_budget_is_masked_whole():
    candidates = list(range(1, 21))  # 20 tokens: budget round(0.15 * 20) = 3; the mention has 6 tokens
    generator = torch.Generator().manual_seed(0)
    assert choose_positions(candidates, [(2, 8)], 0.15, 1.0, generator) == [2, 3, 4, 5, 6, 7]
    # Two mentions, drawn in the order randperm(2) gives under seed 0: [0, 1] -> the 6-token one first uses up
    # the budget (6 >= 3), so the 2-token one is not masked and no single token is added.
    assert choose_positions(candidates, [(2, 8), (10, 12)], 0.15, 1.0, torch.Generator().manual_seed(0)) == [
        2, 3, 4, 5, 6, 7]
    # Reversed order of the spans: the 2-token one first (2 < 3), then the 6-token one still goes in whole.
    assert choose_positions(candidates, [(10, 12), (2, 8)], 0.15, 1.0, torch.Generator().manual_seed(0)) == [
        2, 3, 4, 5, 6, 7, 10, 11]


def test_a_lone_long_mention_is_masked_whole_with_the_mention_probability():
    generator = torch.Generator().manual_seed(1)
    draws = [choose_positions(list(range(1, 21)), [(2, 8)], 0.15, 0.4, generator) for _ in range(4000)]
    whole = sum(set(range(2, 8)) <= set(d) for d in draws) / len(draws)
    assert abs(whole - 0.4) < 0.025  # the old rule (fit the budget or nothing): 0.0
    # Not drawn: 3 single tokens, never a token of the mention.
    assert all(len(d) == 3 and not set(d) & set(range(2, 8)) for d in draws if not set(range(2, 8)) <= set(d))


def test_mention_buckets_and_rates_by_hand(tokenizer):
    assert [mention_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 30)] == ["1-2", "1-2", "3-4", "3-4", "5-8", "5-8", "9+", "9+"]
    texts = [TEXT, "一二三四五六七八九十好", "今天天气很好。"]
    mentions = [[(3, 6, "高血压"), (9, 11, "头痛")], [(0, 10, "一二三四五六七八九十")], []]
    random_ids = torch.arange(5, len(tokenizer))
    # span_prob 1: sentence 1 (budget 2): the first mention drawn leaves 3 or 2 >= 2 -> only it; sentence 2 (budget 2):
    # its 10-character mention is masked whole every time, far past the budget.
    rates = mention_mask_rates(tokenizer, texts, mentions, random_ids, 64, 0.15, 1.0, repeats=4)
    assert rates["kg/mention_mask_rate/9+"] == 1.0 and rates["kg/mention_mask_rate/5-8"] is None
    assert rates["kg/mention_mask_mentions"] == 4 * 3
    assert rates["kg/mention_mask_rate/1-2"] + rates["kg/mention_mask_rate/3-4"] == 1.0  # one of the two, each time
    assert rates["kg/mention_mask_rate"] == round((4 + 4) / 12, 4)
    # No whole-mention masking: 1 single token never covers 高血压 or the 10-character mention.
    plain = mention_mask_rates(tokenizer, texts, mentions, random_ids, 64, 0.15, 0.0, repeats=4)
    assert plain["kg/mention_mask_rate/9+"] == 0.0 and plain["kg/mention_mask_rate/3-4"] == 0.0


@pytest.mark.skipif(not (SHARED / "kg" / "HowNet.spo").is_file(), reason="../shared not found")
def test_real_corpus_every_length_bucket_is_masked_whole_at_least_30_percent(tmp_path):
    """What stage=kgbert measures at setup: the shared corpus aligned with HowNet + Medical, the datamodule's fixed
    2,000-sentence sample (stratified by mention length), the stage's defaults, zh-mlm-small's tokenizer."""
    from transformers import AutoTokenizer

    from datamodules.pretraining.aligned_corpus import MENTION_SAMPLE
    from tests.conftest import compose_config
    from train import instantiate_with

    cfg = compose_config([f"data.corpus.files=[{SHARED / 'corpus'}]", f"data.kg.files=[{SHARED / 'kg'}]",
                          f"data.data_dir={SHARED / 'fewclue'}", "stage=kgbert"], tmp_path / "run")
    datamodule = instantiate_with(cfg.data)
    datamodule.setup()
    sample = datamodule.mention_sample(MENTION_SAMPLE)
    counts = datamodule.mention_counts()
    tok = AutoTokenizer.from_pretrained(SHARED / "encoders" / "zh-mlm-small")
    random_ids = torch.arange(5, len(tok))
    args = (tok, [a.text for a in sample], [a.mentions for a in sample], random_ids, 128, 0.15)
    rates = mention_mask_rates(*args, cfg.stage.mention_mask_prob, seed=42, bucket_weights=counts)
    # 2,000 sentences: 500 each whose longest mention has 1-2, 3-4 or 5-8 characters, all 142 with one of 9+, the
    # rest at random (141 when measured, before unlabeled rows repeating dev/test texts left the corpus):
    # 24,665 mentions x 5 maskings. Measured: 0.382 overall (weighted by the corpus's 40,858 /
    # 98,675 / 4,660 / 148 mentions per bucket); 1-2 0.390, 3-4 0.379, 5-8 0.369, 9+ 0.362; 15.5% of tokens masked.
    # The old rule (a mention only if it fit the budget), same sample: 0.358; 0.385, 0.352, 0.262, 0.085.
    # stage=mlm (no whole-mention masking): 0.006; 0.019, 0.001, 0.0, 0.0.
    assert len(sample) == 2000 and sum(max(len(m[2]) for m in a.mentions) >= 9 for a in sample) == 142
    for bucket in ("1-2", "3-4", "5-8", "9+"):
        assert rates[f"kg/mention_mask_rate/{bucket}"] >= 0.3, (bucket, rates)
    assert 0.35 <= rates["kg/mention_mask_rate"] <= 0.45
    assert rates["kg/mask_ratio"] < 0.2  # overshooting the 15% budget stays small


# -- item 2: the tagger reads the unmasked sentence -------------------------------------------------------
def _rows(text_rows):
    kg = KnowledgeGraph(TRIPLES)
    aligned, _ = align(text_rows, kg, AlignmentRules(min_stop_sentences=100))
    dataset = AlignedDataset(aligned, kg, negatives=3, max_entities=8, max_neighbors=8, seed=0, fixed=True)
    return [dataset[i] for i in range(len(dataset))]


def test_tags_are_computed_on_the_unmasked_sentence(tokenizer, tmp_path):
    rows = _rows(SENTENCES)
    module = stage_module("kgbert", tiny_masked_lm(tokenizer, hidden=32), tokenizer, tmp_path / "run",
                          "stage.dropout=0.0", "stage.mention_mask_prob=1.0")
    module.eval()
    batch = module.collate(rows)
    plain = tokenizer([r.text for r in rows], padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(batch["tag_inputs"]["input_ids"], plain)
    assert not (batch["tag_inputs"]["input_ids"] == tokenizer.mask_token_id).any()
    # 高血压 (tokens 4-6) is masked in the MLM input of row 0 (mention probability 1), not in the tagger's.
    assert (batch["inputs"]["input_ids"] == tokenizer.mask_token_id).sum() > 0
    assert batch["tags"][0, 4:7].tolist() == [1, 2, 2] and batch["tags"][0, 10:12].tolist() == [1, 2]
    with torch.no_grad():
        before = module.step(batch).losses["mention"]
        batch["inputs"]["input_ids"] = torch.full_like(plain, tokenizer.mask_token_id)  # any masking at all
        after = module.step(batch).losses["mention"]
    assert torch.equal(before, after)


# -- item 3: joint masking without copy paths ---------------------------------------------------------------
def test_joint_units_by_hand():
    triple = ("头痛", "类别", "症状")  # segment "头痛 类别 症状": 头痛 0-2, 类别 3-5, 症状 6-8
    subject = joint_units(TEXT, triple, 0)
    assert (subject.hidden_text, subject.hidden_segment, subject.visible_text) == ([(9, 11)], [(0, 2)], [])
    obj = joint_units(TEXT, triple, 2)  # 症状 is not in the sentence: only its slot; 头痛 stays visible there
    assert (obj.hidden_text, obj.hidden_segment, obj.visible_text) == ([], [(6, 8)], [(9, 11)])
    predicate = joint_units(TEXT, triple, 1)
    assert (predicate.hidden_text, predicate.hidden_segment, predicate.visible_text) == ([], [(3, 5)], [(9, 11)])
    # An object inside the subject (高血压 义原 血压): hiding 血压 masks it inside 高血压 in the segment as well.
    nested = joint_units("他有高血压", ("高血压", "义原", "血压"), 2)
    assert (nested.hidden_text, nested.hidden_segment, nested.visible_text) == ([(3, 5)], [(1, 3), (7, 9)], [(2, 5)])
    # Hiding 高血压 hides the 血压 inside it too, or the segment's 血压 would give two of its three characters away.
    outer = joint_units("他有高血压", ("高血压", "义原", "血压"), 0)
    assert (outer.hidden_text, outer.hidden_segment, outer.visible_text) == ([(2, 5), (3, 5)], [(0, 3), (1, 3), (7, 9)], [])


def _spo_row(text, triple, mentions, seed):
    return PretrainRow(text=text, mentions=mentions, triple=triple, negatives=[], neighbors={}, mask_seed=seed)


def test_a_masked_sentence_mention_masks_its_segment_element_exact_positions(tokenizer, tmp_path):
    module = stage_module("kgbert", tiny_masked_lm(tokenizer, hidden=32), tokenizer, tmp_path / "run",
                          "stage.spo_text_mask_prob=1.0")
    row = _spo_row(TEXT, ("头痛", "类别", "症状"), [(3, 6, "高血压"), (9, 11, "头痛")], seed=7)
    spo = module._collate_spo_mask([row])
    ids, labels = spo["inputs"]["input_ids"][0], spo["labels"][0]
    # [CLS] 他1 ... 头10 痛11 。12 [SEP]13 头14 痛15 类16 别17 症18 状19 [SEP]20; 头痛 is the one mentioned end.
    mask = tokenizer.mask_token_id
    assert [int(ids[t]) for t in (10, 11, 14, 15)] == [mask] * 4
    assert tokenizer.convert_ids_to_tokens([int(labels[t]) for t in (10, 11, 14, 15)]) == ["头", "痛", "头", "痛"]
    assert (labels[16:20] == IGNORE).all() and tokenizer.decode(ids[16:20]).replace(" ", "") == "类别症状"
    # Background: round(0.15 * 10) = 2 of the other 10 sentence tokens, by the 80/10/10 rule.
    background = [t for t in range(1, 13) if labels[t] != IGNORE and t not in (10, 11)]
    assert len(background) == 2


def test_no_masked_token_has_a_visible_copy_in_the_pair(tokenizer, tmp_path):
    module = stage_module("kgbert", tiny_masked_lm(tokenizer, hidden=32), tokenizer, tmp_path / "run")
    cases = [(TEXT, ("头痛", "类别", "症状"), [(3, 6, "高血压"), (9, 11, "头痛")]),
             ("阿司匹林可以缓解头痛。", ("阿司匹林", "治疗", "头痛"), [(0, 4, "阿司匹林"), (8, 10, "头痛")]),
             ("他有高血压", ("高血压", "义原", "血压"), [(2, 5, "高血压")])]
    parts = {0: 0, 1: 0, 2: 0}
    for seed in range(60):
        for text, triple, mentions in cases:
            row = _spo_row(text, triple, mentions, seed)
            part = module.spo_part(row, torch.Generator().manual_seed(seed))
            parts[part] += 1
            spo = module._collate_spo_mask([row])
            encoding = tokenizer([text], [" ".join(triple)])
            labelled = {t for t, v in enumerate(spo["labels"][0].tolist()) if v != IGNORE}
            ids = spo["inputs"]["input_ids"][0].tolist()
            for j, name in enumerate(triple):
                slot = sum(len(x) + 1 for x in triple[:j])
                seg = {encoding.char_to_token(0, c, sequence_index=1) for c in range(slot, slot + len(name))}
                occurrences = [{encoding.char_to_token(0, c) for c in range(s, s + len(name))}
                               for s in range(len(text)) if text.startswith(name, s)]
                in_text = set().union(*occurrences) if occurrences else set()
                if seg <= labelled:  # hidden in the segment -> every sentence occurrence hidden, always [MASK]
                    assert in_text <= labelled and all(ids[t] == tokenizer.mask_token_id for t in seg | in_text)
                elif not seg & labelled:  # visible in the segment -> no sentence token of it is predicted
                    assert not in_text & labelled, (seed, text, name)
    assert all(count > 0 for count in parts.values())  # s, p and o are each hidden under some seed
