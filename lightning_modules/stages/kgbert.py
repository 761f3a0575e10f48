"""``stage=kgbert``: knowledge-enhanced pretraining on corpus sentences aligned with a KG.

Objectives, each a weighted loss logged as ``train/loss_<name>`` (weights in ``stage.loss_weights``):

- ``mlm``: masked LM on the sentence; KG mentions are masked whole (``whole_word_mentions``; a mention
  longer than the 15% budget included, see ``masking.choose_positions``);
- ``mention``: O/B/I tags of the KG entity mentions, read from a forward pass over the *unmasked*
  sentence (on the masked one a masked mention shows as a [MASK] run, which gives its tags away);
- ``spo_mask``: ``[CLS] sentence [SEP] s p o [SEP]`` with one element of the triple hidden everywhere it
  occurs in the pair (``masking.joint_units``), so nothing can be copied: with probability
  ``spo_text_mask_prob`` an entity of the triple that the sentence mentions (s or o) is hidden, in the
  sentence and in the segment; otherwise one of s/p/o, drawn uniformly, is hidden in the segment and
  every occurrence of it in the sentence is masked too. Hidden tokens are always ``[MASK]``; 15% of the
  other sentence tokens (never an occurrence of a visible element) are masked by the 80/10/10 rule;
- ``spo_margin``: the SPO scorer must rank the sentence with its aligned triple above the sentence
  with each corrupted triple by ``margin`` (a hinge loss over the negatives, ``datamodules.pretraining.negatives``:
  a presence test of the names in the sentence cannot tell them apart; never repeated, a row with fewer
  negatives scores only those, ``kg/negatives`` logs the mean count);
- ``fusion`` (knowledge gain): the gated GCN fusion of the mentions' KG sub-graph
  (``knowledge_fusion.GatedKnowledgeFusion``) must lower the masked-LM loss on masked mention
  tokens compared with the unfused states: ``L_fused + max(0, L_fused - L_plain) + gate_l1 *
  (mean token gate + mean triple gate)``; the L1 term shuts the gates where knowledge does not help.
  ``kg/gain`` = L_plain - L_fused (positive: knowledge helps) and ``kg/gate_mean`` are logged.

All MLM-type losses use the backbone's own MLM head, so the export is a plain ``*ForMaskedLM``.
The held-out probe: validation sentences are masked with fixed seeds and mentions masked whole with
probability ``mention_mask_prob`` (as in ``stage=mlm``, whatever ``whole_word_mentions``), and
``val/mention_acc`` is the accuracy on the masked mention tokens (``val/gain`` the fusion's gain there).
At the start of training ``kg/mention_mask_rate`` (overall and ``/<length bucket>``) measures the
training masking on a fixed sample of aligned sentences (``masking.mention_mask_rates``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.pretraining.aligned_corpus import PretrainRow
from datamodules.protocol import StageData
from datamodules.errors import ConfigError
from lightning_modules.knowledge.heads import MentionTagger, SpoScorer, margin_loss, tagging_loss
from lightning_modules.knowledge.fusion import GatedKnowledgeFusion, batch_graphs, name_features, sentence_graph
from lightning_modules.knowledge.masking import (
    IGNORE,
    bio_tags,
    choose_positions,
    corrupt,
    generator_for,
    joint_units,
    mask_texts,
    mention_accuracy,
    segment_text,
)
from lightning_modules.stages.mlm import measure_mention_masking, record_validation
from lightning_modules.scale.optim import Optim
from lightning_modules.stages.base import StageModule, StepOutput


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
        if not 0.0 <= spo_text_mask_prob <= 1.0:
            raise ConfigError(f"stage.spo_text_mask_prob={spo_text_mask_prob}; allowed: [0, 1]")
        hidden = masked_lm.config.hidden_size
        self.max_length = max_length
        self.max_pair_length = max_pair_length
        self.mask_prob = mask_prob
        self.span_prob = mention_mask_prob if whole_word_mentions else 0.0
        self.probe_span_prob = mention_mask_prob
        self.spo_text_mask_prob = spo_text_mask_prob
        self.margin = margin
        self.gate_l1 = gate_l1
        self.max_name_tokens = max_name_tokens
        self.mention_head = MentionTagger(hidden, dropout)
        self.spo_head = SpoScorer(hidden, dropout)
        self.fusion = GatedKnowledgeFusion(hidden, fusion_layers, dropout)

    # -- batches ---------------------------------------------------------------------------------
    def collate(self, rows: list[PretrainRow]) -> dict:
        # Validation rows (fixed masks) get the probe's whole-mention masking, the same in every pretraining stage.
        span_prob = self.span_prob if rows[0].mask_seed is None else self.probe_span_prob
        masked = mask_texts(
            self.tokenizer, [r.text for r in rows], [r.mentions for r in rows], [r.mask_seed for r in rows],
            self.random_ids, self.max_length, self.mask_prob, span_prob,
        )
        length = masked.labels.shape[1]
        batch = {
            "inputs": masked.inputs,
            "labels": masked.labels,
            "mention_tokens": masked.mention_tokens(),
            # The tagger reads the unmasked sentence: tags are never inferred from the shape of a [MASK] run.
            "tag_inputs": masked.plain_inputs(),
            "tags": torch.stack([bio_tags(length, s, m) for s, m in zip(masked.spans, masked.maskable)]),
        }
        batch.update(self._collate_graph(rows, masked, length))
        spo_rows = [r for r in rows if r.triple is not None]
        batch["spo_mask"] = self._collate_spo_mask(spo_rows) if spo_rows else None
        margin_rows = [r for r in spo_rows if r.negatives]
        batch["margin"] = self._collate_margin(margin_rows) if margin_rows else None
        batch["negatives"] = [len(r.negatives) for r in spo_rows]
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
        encoding = self.tokenizer(
            [r.text for r in rows], [segment_text(r.triple) for r in rows], truncation="only_first",
            max_length=self.max_pair_length, padding=True, return_special_tokens_mask=True, return_tensors="pt",
        )
        special = encoding.pop("special_tokens_mask")
        input_ids = encoding["input_ids"].clone()
        labels = torch.full_like(input_ids, IGNORE)
        for i, row in enumerate(rows):
            generator = generator_for(row.mask_seed)
            sequence = encoding.sequence_ids(i)
            text_tokens = [t for t, s in enumerate(sequence) if s == 0 and not special[i, t]]
            units = joint_units(row.text, row.triple, self.spo_part(row, generator))
            hidden = self._tokens(encoding, i, units.hidden_text, 0) | self._tokens(encoding, i, units.hidden_segment, 1)
            shown = self._tokens(encoding, i, units.visible_text, 0)
            background = choose_positions([t for t in text_tokens if t not in hidden | shown], [], self.mask_prob, 0.0,
                                          generator)
            input_ids[i], labels[i] = corrupt(
                encoding["input_ids"][i], background, self.tokenizer.mask_token_id, self.random_ids, generator,
            )
            where = torch.tensor(sorted(hidden), dtype=torch.long)
            labels[i, where] = encoding["input_ids"][i, where]
            input_ids[i, where] = self.tokenizer.mask_token_id  # always [MASK]: no 10% left visible to copy
        inputs = dict(encoding)
        inputs["input_ids"] = input_ids
        return {"inputs": inputs, "labels": labels}

    def spo_part(self, row: PretrainRow, generator) -> int:
        """The element of ``row.triple`` to hide (0 s, 1 p, 2 o): with probability ``spo_text_mask_prob`` an
        entity that the sentence mentions, else one of the three uniformly."""
        mentioned = [j for j in (0, 2) if row.triple[j] in row.text]
        draw = torch.rand(2, generator=generator).tolist()
        if mentioned and draw[0] < self.spo_text_mask_prob:
            return mentioned[min(int(draw[1] * len(mentioned)), len(mentioned) - 1)]
        return min(int(draw[1] * 3), 2)

    @staticmethod
    def _tokens(encoding, i: int, spans: list[tuple[int, int]], sequence: int) -> set[int]:
        """Token positions of the characters of ``spans`` in sequence ``sequence`` of row ``i`` (truncated ones left out)."""
        found = {encoding.char_to_token(i, c, sequence_index=sequence) for start, end in spans for c in range(start, end)}
        return found - {None}

    def _collate_margin(self, rows: list[PretrainRow]) -> dict:
        # Rows have 1..k negatives; the missing ones are padding that the loss leaves out (never repeats).
        k = max(len(r.negatives) for r in rows)
        texts, knowledge, valid = [], [], []
        for row in rows:
            triples = [row.triple, *row.negatives]
            valid.append([j < len(row.negatives) for j in range(k)])
            for triple in triples + [row.triple] * (k - len(row.negatives)):
                texts.append(row.text)
                knowledge.append(segment_text(triple))
        encoding = self.tokenizer(
            texts, knowledge, truncation="only_first", max_length=self.max_pair_length,
            padding=True, return_tensors="pt",
        )
        return {"inputs": dict(encoding), "groups": (len(rows), 1 + k), "valid": torch.tensor(valid, dtype=torch.bool)}

    # -- objectives ------------------------------------------------------------------------------
    def step(self, batch: dict) -> StepOutput:
        hidden = self.encode(batch["inputs"])
        labels = batch["labels"]
        loss_mlm, predicted, targets = self.mlm_loss(hidden, labels)
        tag_logits = self.mention_head(self.encode(batch["tag_inputs"]))
        losses = {"mlm": loss_mlm, "mention": tagging_loss(tag_logits, batch["tags"])}
        metrics: dict[str, torch.Tensor] = {}
        fusion = self.knowledge_gain(hidden, labels, batch)
        if fusion is not None:
            losses["fusion"], metrics = fusion
        accuracy = mention_accuracy(predicted, targets, labels, batch["mention_tokens"])
        if accuracy is not None:
            metrics["kg/mention_acc"] = accuracy
        if batch["negatives"]:
            metrics["kg/negatives"] = torch.tensor(sum(batch["negatives"]) / len(batch["negatives"]))
        if batch["spo_mask"] is not None:
            spo = batch["spo_mask"]
            losses["spo_mask"] = self.mlm_loss(self.encode(spo["inputs"]), spo["labels"])[0]
        if batch["margin"] is not None:
            pairs = batch["margin"]
            scores = self.spo_head(self.encode(pairs["inputs"])[:, 0]).view(*pairs["groups"])
            losses["spo_margin"] = margin_loss(scores.float(), self.margin, pairs["valid"].to(scores.device))
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
        measure_mention_masking(self, datamodule)

    def on_validation_end(self) -> None:
        record_validation(self)

    def export_modules(self) -> dict[str, nn.Module]:
        """The fusion module and the mention/SPO heads, beside the masked LM (``knowledge_fusion/``)."""
        return {"knowledge_fusion/fusion.pt": self.fusion, "knowledge_fusion/mention_head.pt": self.mention_head,
                "knowledge_fusion/spo_head.pt": self.spo_head}

    def export_configs(self) -> dict[str, dict]:
        return {"knowledge_fusion/config.json": {
            **self.fusion.config, "class": "lightning_modules.knowledge.fusion.GatedKnowledgeFusion",
            "node_features": "mean input embedding of the node name; the [MASK] embedding for a masked mention",
        }}
