"""``stage=kgbert``: knowledge-enhanced pretraining on corpus sentences aligned with a KG.

Objectives, each a weighted loss logged as ``train/loss_<name>`` (weights in ``stage.loss_weights``):

- ``mlm``: masked LM on the sentence; KG mentions are masked whole (``whole_word_mentions``);
- ``mention``: O/B/I tags of the KG entity mentions, from the same forward pass;
- ``spo_mask``: ``[CLS] sentence [SEP] s p o [SEP]`` with masks in both parts: with probability
  ``spo_text_mask_prob`` the triple's mention in the sentence is masked whole (text predicted from
  knowledge), otherwise one of s/p/o is masked whole (knowledge predicted from text); 15% of the
  other sentence tokens are masked too;
- ``spo_margin``: the SPO scorer must rank the sentence with its aligned triple above the sentence
  with each corrupted triple by ``margin`` (a hinge loss over the negatives);
- ``fusion`` (knowledge gain): the gated GCN fusion of the mentions' KG sub-graph
  (``knowledge_fusion.GatedKnowledgeFusion``) must lower the masked-LM loss on masked mention
  tokens compared with the unfused states: ``L_fused + max(0, L_fused - L_plain) + gate_l1 *
  (mean token gate + mean triple gate)``; the L1 term shuts the gates where knowledge does not help.
  ``kg/gain`` = L_plain - L_fused (positive: knowledge helps) and ``kg/gate_mean`` are logged.

All MLM-type losses use the backbone's own MLM head, so the export is a plain ``*ForMaskedLM``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.pretraining import PretrainRow
from datamodules.protocol import StageData
from errors import ConfigError
from lightning_modules.kg_heads import MentionTagger, SpoScorer, margin_loss, tagging_loss
from lightning_modules.knowledge_fusion import GatedKnowledgeFusion, batch_graphs, name_features, sentence_graph
from lightning_modules.masking import IGNORE, bio_tags, choose_positions, corrupt, generator_for, mask_texts, token_span
from lightning_modules.optim import Optim
from lightning_modules.stage import StageModule, StepOutput


class KgBertModule(StageModule):
    loss_names = ("mlm", "mention", "spo_mask", "spo_margin", "fusion")
    eval_loss = "mlm"

    def __init__(
        self,
        masked_lm: nn.Module,
        tokenizer,
        optim: Optim,
        max_length: int,
        max_pair_length: int,
        mask_prob: float,
        whole_word_mentions: bool,
        mention_mask_prob: float,
        spo_text_mask_prob: float,
        margin: float,
        loss_weights: dict[str, float],
        fusion_layers: int,
        gate_l1: float,
        max_name_tokens: int,
        dropout: float,
        export_dir: str | None,
    ) -> None:
        vocab_size = masked_lm.get_input_embeddings().num_embeddings
        super().__init__(masked_lm, tokenizer, optim, vocab_size, loss_weights, export_dir)
        self.save_settings()
        if not 0.0 <= spo_text_mask_prob <= 1.0:
            raise ConfigError(f"stage.spo_text_mask_prob={spo_text_mask_prob}; allowed: [0, 1]")
        hidden = masked_lm.config.hidden_size
        self.max_length = max_length
        self.max_pair_length = max_pair_length
        self.mask_prob = mask_prob
        self.span_prob = mention_mask_prob if whole_word_mentions else 0.0
        self.spo_text_mask_prob = spo_text_mask_prob
        self.margin = margin
        self.gate_l1 = gate_l1
        self.max_name_tokens = max_name_tokens
        self.mention_head = MentionTagger(hidden, dropout)
        self.spo_head = SpoScorer(hidden, dropout)
        self.fusion = GatedKnowledgeFusion(hidden, fusion_layers, dropout)

    # -- batches ---------------------------------------------------------------------------------
    def collate(self, rows: list[PretrainRow]) -> dict:
        masked = mask_texts(
            self.tokenizer, [r.text for r in rows], [r.mentions for r in rows], [r.mask_seed for r in rows],
            self.random_ids, self.max_length, self.mask_prob, self.span_prob,
        )
        length = masked.labels.shape[1]
        batch = {
            "size": len(rows),
            "inputs": masked.inputs,
            "labels": masked.labels,
            "tags": torch.stack([bio_tags(length, s, m) for s, m in zip(masked.spans, masked.maskable)]),
        }
        batch.update(self._collate_graph(rows, masked, length))
        spo_rows = [r for r in rows if r.triple is not None]
        batch["spo_mask"] = self._collate_spo_mask(spo_rows) if spo_rows else None
        margin_rows = [r for r in spo_rows if r.negatives]
        batch["margin"] = self._collate_margin(margin_rows) if margin_rows else None
        return batch

    def _collate_graph(self, rows: list[PretrainRow], masked, length: int) -> dict:
        names: dict[str, int] = {}
        graphs, token_index, token_centre = [], [], []
        for i, row in enumerate(rows):
            spans, span_names = masked.spans[i], masked.span_names[i]
            hidden_names = {n for (s, e), n in zip(spans, span_names) if (masked.labels[i, s:e] != IGNORE).any()}
            graph, centres = sentence_graph(row.neighbors, hidden_names, names)
            graphs.append(graph)
            centre_of = {name: j for j, name in enumerate(centres)}
            for (start, end), name in zip(spans, span_names):
                if name in centre_of:
                    for t in range(start, end):
                        token_index.append(i * length + t)
                        token_centre.append((i, centre_of[name]))
        graph = batch_graphs(graphs)
        offsets = graph.ptr.tolist()
        if names:
            encoded = self.tokenizer(
                list(names), add_special_tokens=False, padding=True, truncation=True,
                max_length=self.max_name_tokens, return_tensors="pt",
            )
            name_ids, name_mask = encoded["input_ids"], encoded["attention_mask"]
        else:
            name_ids = name_mask = torch.zeros(0, 1, dtype=torch.long)
        return {
            "graph": graph,
            "name_ids": name_ids,
            "name_mask": name_mask,
            "token_index": torch.tensor(token_index, dtype=torch.long),
            "token_node": torch.tensor([offsets[i] + j for i, j in token_centre], dtype=torch.long),
        }

    def _collate_spo_mask(self, rows: list[PretrainRow]) -> dict:
        knowledge = [" ".join(r.triple) for r in rows]
        encoding = self.tokenizer(
            [r.text for r in rows], knowledge, truncation="only_first", max_length=self.max_pair_length,
            padding=True, return_special_tokens_mask=True, return_tensors="pt",
        )
        special = encoding.pop("special_tokens_mask")
        input_ids = encoding["input_ids"].clone()
        labels = torch.full_like(input_ids, IGNORE)
        for i, row in enumerate(rows):
            generator = generator_for(row.mask_seed)
            sequence = encoding.sequence_ids(i)
            text_tokens = [t for t, s in enumerate(sequence) if s == 0 and not special[i, t]]
            unit = self._spo_unit(encoding, i, row, generator)
            background = choose_positions([t for t in text_tokens if t not in unit], [], self.mask_prob, 0.0, generator)
            input_ids[i], labels[i] = corrupt(
                encoding["input_ids"][i], sorted(set(unit) | set(background)),
                self.tokenizer.mask_token_id, self.random_ids, generator,
            )
        inputs = dict(encoding)
        inputs["input_ids"] = input_ids
        return {"inputs": inputs, "labels": labels}

    def _spo_unit(self, encoding, i: int, row: PretrainRow, generator) -> list[int]:
        """Tokens masked whole: the triple's mentions in the text, or one of s/p/o in the knowledge part."""
        s, p, o = row.triple
        mention_tokens: list[int] = []
        for start, end, name in row.mentions:
            span = token_span(encoding, i, start, end) if name in (s, o) else None
            if span is not None:
                mention_tokens += range(*span)
        draw = torch.rand(2, generator=generator).tolist()
        if mention_tokens and draw[0] < self.spo_text_mask_prob:
            return mention_tokens
        part = min(int(draw[1] * 3), 2)
        start = [0, len(s) + 1, len(s) + len(p) + 2][part]
        end = start + len(row.triple[part])
        tokens = {encoding.char_to_token(i, c, sequence_index=1) for c in range(start, end)} - {None}
        return sorted(tokens)

    def _collate_margin(self, rows: list[PretrainRow]) -> dict:
        k = max(len(r.negatives) for r in rows)
        texts, knowledge = [], []
        for row in rows:
            negatives = [row.negatives[j % len(row.negatives)] for j in range(k)]
            for triple in [row.triple, *negatives]:
                texts.append(row.text)
                knowledge.append(" ".join(triple))
        encoding = self.tokenizer(
            texts, knowledge, truncation="only_first", max_length=self.max_pair_length,
            padding=True, return_tensors="pt",
        )
        return {"inputs": dict(encoding), "groups": (len(rows), 1 + k)}

    # -- objectives ------------------------------------------------------------------------------
    def step(self, batch: dict) -> StepOutput:
        hidden = self.encode(batch["inputs"])
        labels = batch["labels"]
        loss_mlm, predicted, targets = self.mlm_loss(hidden, labels)
        losses = {"mlm": loss_mlm, "mention": tagging_loss(self.mention_head(hidden), batch["tags"])}
        metrics: dict[str, torch.Tensor] = {}
        fusion = self.knowledge_gain(hidden, labels, batch)
        if fusion is not None:
            losses["fusion"], metrics = fusion
        if batch["spo_mask"] is not None:
            spo = batch["spo_mask"]
            losses["spo_mask"] = self.mlm_loss(self.encode(spo["inputs"]), spo["labels"])[0]
        if batch["margin"] is not None:
            pairs = batch["margin"]
            scores = self.spo_head(self.encode(pairs["inputs"])[:, 0]).view(*pairs["groups"])
            losses["spo_margin"] = margin_loss(scores.float(), self.margin)
        idle = [m for name, m in (("fusion", self.fusion), ("spo_margin", self.spo_head)) if name not in losses]
        return StepOutput(losses, predictions=predicted, targets=targets, metrics=metrics, idle=self.idle_term(idle))

    def node_features(self, batch: dict) -> torch.Tensor:
        embeddings = self.backbone.get_input_embeddings()
        graph = batch["graph"]
        features = name_features(embeddings, batch["name_ids"], batch["name_mask"])[graph.name_of_node]
        mask_vector = embeddings.weight[self.tokenizer.mask_token_id].to(features.dtype)
        return torch.where(graph.masked.unsqueeze(-1), mask_vector, features)

    def knowledge_gain(self, hidden: torch.Tensor, labels: torch.Tensor, batch: dict):
        """(fusion loss, metrics) or None when no mention token is linked in the batch."""
        token_index = batch["token_index"]
        if token_index.numel() == 0:
            return None
        out = self.fusion(hidden, self.node_features(batch), batch["graph"], token_index, batch["token_node"])
        gates = out.token_gates.mean()
        triple_gates = out.edge_gates.mean() if out.edge_gates.numel() else gates.new_zeros(())
        metrics = {"kg/gate_mean": gates.detach(), "kg/triple_gate_mean": triple_gates.detach()}
        sparsity = self.gate_l1 * (gates + triple_gates)
        flat_labels = labels.reshape(-1)
        scored = token_index[flat_labels[token_index] != IGNORE]
        if scored.numel() == 0:
            return sparsity, metrics
        size = hidden.shape[-1]
        targets = flat_labels[scored]
        plain = F.cross_entropy(self.mlm_head(hidden.reshape(-1, size)[scored]).float(), targets)
        fused = F.cross_entropy(self.mlm_head(out.hidden.reshape(-1, size)[scored]).float(), targets)
        metrics["kg/gain"] = (plain - fused).detach()
        return fused + F.relu(fused - plain.detach()) + sparsity, metrics

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        datamodule: StageData = self.trainer.datamodule
        if not datamodule.stats.get("kg/aligned_pairs"):
            raise ConfigError(
                "stage=kgbert needs sentences aligned with KG triples, and kg/aligned_pairs=0: point data.kg.files "
                "at triple files (e.g. KG_DIR=../shared/kg) and check that their entities occur in the corpus"
            )

    def export_modules(self) -> dict[str, nn.Module]:
        """The fusion module and the mention/SPO heads, beside the masked LM (``knowledge_fusion/``)."""
        return {"knowledge_fusion/fusion.pt": self.fusion, "knowledge_fusion/mention_head.pt": self.mention_head,
                "knowledge_fusion/spo_head.pt": self.spo_head}

    def export_configs(self) -> dict[str, dict]:
        return {"knowledge_fusion/config.json": {
            **self.fusion.config, "class": "lightning_modules.knowledge_fusion.GatedKnowledgeFusion",
            "node_features": "mean input embedding of the node name; the [MASK] embedding for a masked mention",
        }}
