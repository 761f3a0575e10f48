"""stage=kgbert / stage=mlm: masking, BIO tags, gated fusion, over-fitting each loss, export, train.py runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM

from datamodules.pretraining.alignment import AlignmentRules, align
from datamodules.pretraining.kg import KnowledgeGraph
from datamodules.pretraining.aligned_corpus import AlignedDataset
from lightning_modules.encoders.char_vocab import char_tokenizer
from lightning_modules.knowledge.fusion import GatedKnowledgeFusion, batch_graphs, load_fusion, sentence_graph
from lightning_modules.knowledge.masking import IGNORE, bio_tags, choose_positions, corrupt
from tests.conftest import compose_config
from tests.helpers import stage_module
from train import train

TRIPLES = [
    ("高血压", "类别", "疾病"), ("头痛", "类别", "症状"), ("头痛", "义原", "疼痛"), ("发热", "类别", "症状"),
    ("咳嗽", "类别", "症状"), ("肺炎", "类别", "疾病"), ("阿司匹林", "治疗", "头痛"), ("感冒", "类别", "疾病"),
]
SENTENCES = ["他患有高血压，经常头痛。", "病人发热三天伴咳嗽。", "医生说是肺炎引起的发热。", "阿司匹林可以缓解头痛。",
             "感冒以后一直咳嗽。", "今天天气很好。"]


# -- masking ---------------------------------------------------------------------------------------
def test_bio_tags_by_hand():
    # [CLS] t1 t2 t3 t4 t5 t6 [SEP]: mentions on tokens 1-2 and 5.
    tags = bio_tags(8, [(1, 3), (5, 6)], maskable=list(range(1, 7)))
    assert tags.tolist() == [IGNORE, 1, 2, 0, 0, 1, 0, IGNORE]


def test_mentions_are_masked_whole_and_the_budget_holds():
    candidates = list(range(1, 21))  # 20 tokens: budget round(0.15 * 20) = 3
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        chosen = choose_positions(candidates, [(2, 5)], 0.15, 1.0, generator)
        assert chosen == sorted(chosen) and len(chosen) == 3
        assert chosen == [2, 3, 4]  # the 3-token mention fits the budget exactly and is always taken
    for _ in range(50):
        chosen = set(choose_positions(candidates, [(2, 4), (10, 12)], 0.15, 0.0, generator))
        assert len(chosen) == 3 and not chosen & {2, 3, 10, 11}  # mention tokens never masked one by one


def test_corruption_is_80_10_10_and_labels_keep_the_originals():
    ids = torch.arange(10, 10010)
    positions = list(range(0, 10000, 2))
    random_ids = torch.arange(100, 200)
    corrupted, labels = corrupt(ids, positions, 4, random_ids, torch.Generator().manual_seed(0))
    assert torch.equal(labels[positions], ids[positions]) and (labels[1::2] == IGNORE).all()
    assert torch.equal(corrupted[1::2], ids[1::2])
    picked = corrupted[positions]
    masked = (picked == 4).float().mean().item()
    swapped = ((picked >= 100) & (picked < 200)).float().mean().item()
    assert abs(masked - 0.8) < 0.03 and abs(swapped - 0.1) < 0.02


# -- fusion ----------------------------------------------------------------------------------------
def _fusion_inputs(hidden_size: int = 16):
    names: dict[str, int] = {}
    graph_a, centres_a = sentence_graph({"头痛": [("类别", "症状"), ("义原", "疼痛")]}, {"头痛"}, names)
    graph_b, centres_b = sentence_graph({"感冒": [("类别", "疾病")], "咳嗽": [("类别", "症状")]}, set(), names)
    graph = batch_graphs([graph_a, graph_b])
    hidden = torch.randn(2, 6, hidden_size)
    # Sentence a: 头痛 on tokens 1-2 (node 0); sentence b: 感冒 on 1-2 (node 3), 咳嗽 on 4 (node 4).
    token_index = torch.tensor([1, 2, 6 + 1, 6 + 2, 6 + 4])
    token_node = torch.tensor([0, 0, 3, 3, 4])
    features = torch.randn(graph.num_nodes, hidden_size)
    return hidden, features, graph, token_index, token_node, names


def test_sentence_graphs_batch_with_shifted_edges_and_masked_centres():
    hidden, features, graph, token_index, token_node, names = _fusion_inputs()
    assert list(names) == ["头痛", "症状", "疼痛", "感冒", "咳嗽", "疾病"]
    assert graph.num_nodes == 3 + 4  # a: 头痛 症状 疼痛; b: 感冒 咳嗽 疾病 症状
    assert graph.edge_centre.tolist() == [0, 0, 3, 4] and graph.edge_other.tolist() == [1, 2, 5, 6]
    assert graph.masked.tolist() == [True, False, False, False, False, False, False]
    assert graph.name_of_node.tolist() == [0, 1, 2, 3, 4, 5, 1]


def test_gates_lie_in_0_1_and_a_closed_gate_leaves_the_tokens_unchanged():
    torch.manual_seed(0)
    hidden, features, graph, token_index, token_node, _ = _fusion_inputs()
    fusion = GatedKnowledgeFusion(16, num_layers=2, dropout=0.0)
    out = fusion(hidden, features, graph, token_index, token_node)
    assert out.token_gates.shape == (5,) and out.edge_gates.shape == (4,)
    for gates in (out.token_gates, out.edge_gates):
        assert ((gates > 0) & (gates < 1)).all()
    untouched = torch.ones(2 * 6, dtype=torch.bool)
    untouched[token_index] = False
    assert torch.equal(out.hidden.reshape(12, 16)[untouched], hidden.reshape(12, 16)[untouched])
    assert not torch.allclose(out.hidden.reshape(12, 16)[token_index], hidden.reshape(12, 16)[token_index])
    with torch.no_grad():
        fusion.token_gate.bias.fill_(-60.0)  # sigmoid(-60) ~ 1e-26: the gate is shut
    shut = fusion(hidden, features, graph, token_index, token_node)
    assert torch.allclose(shut.hidden, hidden, atol=1e-6)


# -- the module, over-fitting a handful of rows --------------------------------------------------
@pytest.fixture
def kg_rows(tmp_path):
    kg = KnowledgeGraph(TRIPLES)
    aligned, stats = align(SENTENCES, kg, AlignmentRules(min_stop_sentences=100))
    dataset = AlignedDataset(aligned, kg, negatives=3, max_entities=8, max_neighbors=8, seed=0, fixed=True)
    rows = [dataset[i] for i in range(len(dataset))]
    names = [n for t in TRIPLES for n in t]
    tokenizer = char_tokenizer([*SENTENCES, *names], tmp_path / "cache")
    return rows, tokenizer, stats


def tiny_masked_lm(tokenizer, hidden: int = 64) -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id)
    return BertForMaskedLM(config)


def test_every_kgbert_loss_is_finite_and_falls_when_overfitting_a_few_rows(kg_rows, tmp_path):
    rows, tokenizer, stats = kg_rows
    # 高血压 1 + 头痛 2; 发热 1 + 咳嗽 1; 肺炎 1 + 发热 1; 阿司匹林 1 + 头痛 2; 感冒 1 + 咳嗽 1; none.
    assert stats["kg/aligned_pairs"] == 12 and stats["kg/aligned_sentences"] == 5
    module = stage_module("kgbert", tiny_masked_lm(tokenizer, hidden=32), tokenizer, tmp_path / "run",
                          "stage.dropout=0.0", "stage.mask_prob=0.3")
    batch = module.collate(rows)  # fixed masks (mask_seed), so the same batch is fitted every step
    # Negatives per row (datamodules.pretraining.negatives): 2, 1 (咳嗽 类别 症状 is true), 2, 1 (the swap), 2; never repeated.
    assert batch["spo_mask"] is not None and batch["margin"]["groups"] == (5, 3)
    assert batch["margin"]["valid"].sum(1).tolist() == [2, 1, 2, 1, 2]
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    history = []
    for _ in range(20):
        out = module.training_output(batch)
        total = module.total_loss(out)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in out.losses.items()} | {k: v.item() for k, v in out.metrics.items()})
    first, last = history[0], history[-1]
    assert set(first) >= {"mlm", "mention", "spo_mask", "spo_margin", "fusion", "kg/gate_mean"}
    for name in ("mlm", "mention", "spo_mask", "spo_margin", "fusion"):
        assert all(math.isfinite(h[name]) for h in history), name
        assert last[name] < 0.5 * first[name], (name, first[name], last[name])
    assert all(0.0 < h["kg/gate_mean"] < 1.0 for h in history)


def test_export_reloads_with_identical_logits(kg_rows, tmp_path):
    rows, tokenizer, _ = kg_rows
    module = stage_module("kgbert", tiny_masked_lm(tokenizer), tokenizer, tmp_path / "run")
    module.eval()
    export = module.export(tmp_path / "export")
    model = AutoModelForMaskedLM.from_pretrained(export).eval()
    reloaded = AutoTokenizer.from_pretrained(export)
    encoded = reloaded(SENTENCES, padding=True, return_tensors="pt")
    original = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert encoded["input_ids"].tolist() == original["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(model(**encoded).logits, module.backbone(**encoded).logits)
    fusion = load_fusion(export)
    for key, value in module.fusion.state_dict().items():
        assert torch.equal(fusion.state_dict()[key], value)


def test_mlm_module_masks_mentions_whole_when_asked(kg_rows, tmp_path):
    rows, tokenizer, _ = kg_rows
    module = stage_module("mlm", tiny_masked_lm(tokenizer), tokenizer, tmp_path / "run", "stage.whole_word_mentions=true",
                          "stage.mention_mask_prob=1.0", "stage.mask_prob=0.3")
    batch = module.collate(rows[:1])  # 他患有高血压，经常头痛。: 12 characters, budget round(0.3 * 12) = 4
    masked = (batch["labels"][0] != IGNORE).nonzero().flatten().tolist()
    # Whichever of 高血压 (tokens 4-6) and 头痛 (10-11) comes first leaves the budget unspent (3 or 2 < 4), so the
    # second is masked whole too, past the budget: 5 tokens, and no single token on top.
    assert masked == [4, 5, 6, 10, 11]


# -- through train.py ------------------------------------------------------------------------------
@pytest.fixture
def small_corpus(tmp_path):
    corpus = tmp_path / "corpus" / "notes.txt"
    corpus.parent.mkdir()
    corpus.write_text("\n".join(f"{s}第{i}次记录。" for i in range(8) for s in SENTENCES) + "\n", encoding="utf-8")
    kg = tmp_path / "kg" / "medical.spo"
    kg.parent.mkdir()
    kg.write_text("\n".join("\t".join(t) for t in TRIPLES) + "\n", encoding="utf-8")
    return corpus.parent, kg.parent


def pretrain_overrides(corpus: Path, kg: Path) -> list[str]:
    return [
        f"data.corpus.files=[{corpus}]", f"data.kg.files=[{kg}]", "data.corpus.fewclue_tasks=[]",
        "data.val_size=8", "data.batch_size=8", "data.alignment.min_stop_sentences=1000",
        "trainer.max_steps=3", "model.hidden_size=32", "model.intermediate_size=64",
    ]


def test_kgbert_through_train_records_the_losses_alignment_and_export(make_config, small_corpus):
    corpus, kg = small_corpus
    cfg = make_config(["stage=kgbert", *pretrain_overrides(corpus, kg)])
    assert cfg.data._target_.endswith("PretrainCorpusDataModule")  # stage=kgbert switched the data group
    results = train(cfg)
    for name in ("mlm", "mention", "spo_mask", "spo_margin", "fusion"):
        assert math.isfinite(results[f"train/loss_{name}"]), name
    # 48 sentences; 40 aligned (the 今天天气很好 ones have no entity); 12 pairs per 6 sentences, x 8.
    assert results["kg/sentences"] == 48 and results["kg/aligned_pairs"] == 96
    assert results["kg/coverage"] == round(40 / 48, 4) and results["kg/triples_per_sentence"] == 2.4
    assert 0.0 < results["kg/gate_mean"] < 1.0
    assert results["val/acc"] is not None and 0.0 <= results["val/acc"] <= 1.0
    # The held-out probe and the masking measured at setup (names of 2-4 characters: no 5-8 or 9+ bucket).
    assert 0.0 <= results["val/mention_acc"] <= 1.0 and "val/gain" in results
    assert results["kg/mention_mask_rate/5-8"] is None and results["kg/mention_mask_rate/9+"] is None
    assert 0.0 < results["kg/mention_mask_rate/1-2"] <= 1.0 and 0.0 < results["kg/mention_mask_rate/3-4"] <= 1.0
    assert results["kg/mention_mask_sample"] == 34  # 40 with a mention, less the 6 of them among the 8 held out
    assert 0.0 < results["kg/negatives_mean"] <= 3.0
    export = Path(results["export_dir"])
    assert export == Path(cfg.paths.output_dir) / "export"
    model = AutoModelForMaskedLM.from_pretrained(export)
    assert type(model).__name__ == "BertForMaskedLM"
    assert (export / "knowledge_fusion" / "fusion.pt").is_file()
    saved = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert saved["export_dir"] == "export" and saved["train/loss_spo_margin"] == results["train/loss_spo_margin"]


def test_kgbert_without_aligned_pairs_stops_with_a_reason(make_config, small_corpus, tmp_path):
    corpus, _ = small_corpus
    empty = tmp_path / "other.spo"
    empty.write_text("量子\t义原\t物理\n", encoding="utf-8")
    cfg = make_config(["stage=kgbert", *pretrain_overrides(corpus, empty)])
    with pytest.raises(ValueError, match="kg/aligned_pairs=0"):
        train(cfg)


def test_mlm_stage_and_pretraining_from_an_export(make_config, small_corpus, tmp_path, shared_fewclue):
    corpus, kg = small_corpus
    # callbacks=pretrain keeps the last weights; train.py measures val/acc by reloading that checkpoint.
    first = train(make_config(["stage=mlm", "callbacks=pretrain", *pretrain_overrides(corpus, kg)]))
    assert set(k for k in first if k.startswith("train/loss_")) == {"train/loss_mlm"}
    assert first["checkpoint"].endswith("checkpoints/last.ckpt") and first["val/acc"] is not None
    overrides = [o for o in pretrain_overrides(corpus, kg) if not o.startswith("model.")]
    cfg = compose_config(["stage=kgbert", "model=hf", f"model.pretrained={first['export_dir']}", *overrides],
                         tmp_path / "second", shared_fewclue)
    second = train(cfg)
    assert second["pretrained"] == first["export_dir"] and math.isfinite(second["train/loss_spo_mask"])
