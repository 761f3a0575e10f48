"""Gated knowledge fusion: a GCN over the KG sub-graph of a sentence's linked entities.

Per sentence the graph holds each linked entity (a "centre") and up to N of its KG neighbours,
joined by the triples between them (both directions); node features are the encoder's word
embeddings of the node names (mean over the name's tokens). A centre whose mention is masked in
the text shows the ``[MASK]`` embedding instead of its name, so the graph never leaks the answer.

Two gates decide how much knowledge flows:
- a triple gate per edge, sigmoid(w·[mention context; neighbour name]), weights the edge in the
  GCN, so a triple that does not fit the sentence can be shut off;
- a token gate per mention token, sigmoid(w·[token state; aggregated entity state]), scales what
  is added to the token: ``h' = h + g · W k``.
Both sit on top of the encoder's last hidden states, outside the Hugging Face model, so the
exported backbone stays a plain ``*ForMaskedLM``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GCNConv
from torch_geometric.utils import scatter

from datamodules.errors import ConfigError


@dataclass
class FusionOutput:
    hidden: torch.Tensor  # [B, T, H] fused token states
    token_gates: torch.Tensor  # [M] one per mention token, in (0, 1)
    edge_gates: torch.Tensor  # [E] one per triple edge, in (0, 1)


class GatedKnowledgeFusion(nn.Module):
    def __init__(self, hidden_size: int, num_layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"stage.fusion_layers={num_layers}; must be at least 1")
        self.config = {"hidden_size": hidden_size, "num_layers": num_layers, "dropout": dropout}
        self.node_norm = nn.LayerNorm(hidden_size)
        self.convs = nn.ModuleList(GCNConv(hidden_size, hidden_size) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.edge_gate = nn.Linear(2 * hidden_size, 1)
        self.token_gate = nn.Linear(2 * hidden_size, 1)
        self.knowledge = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        hidden: torch.Tensor,
        node_features: torch.Tensor,
        graph: Batch,
        token_index: torch.Tensor,
        token_node: torch.Tensor,
    ) -> FusionOutput:
        """``token_index``: flat positions (b * T + t) of mention tokens; ``token_node``: their centre node."""
        batch, length, size = hidden.shape
        flat = hidden.reshape(batch * length, size)
        tokens = flat[token_index]
        nodes = node_features.shape[0]
        x = self.node_norm(node_features)
        # Mention context per centre: the mean state of its tokens in the sentence.
        context = scatter(tokens, token_node, dim=0, dim_size=nodes, reduce="mean")
        centre, other = graph.edge_centre, graph.edge_other
        edge_gates = torch.sigmoid(self.edge_gate(torch.cat([context[centre], x[other]], dim=-1))).squeeze(-1)
        edge_index = torch.cat([torch.stack([other, centre]), torch.stack([centre, other])], dim=1)
        edge_weight = torch.cat([edge_gates, edge_gates])
        for i, conv in enumerate(self.convs):
            x = conv(x, edge_index, edge_weight)
            if i < len(self.convs) - 1:
                x = self.dropout(torch.relu(x))
        knowledge = self.knowledge(x)[token_node]
        token_gates = torch.sigmoid(self.token_gate(torch.cat([tokens, knowledge], dim=-1))).squeeze(-1)
        # under bf16 autocast the GCN output is bf16 while the token states are fp32
        fused = flat.index_add(0, token_index, (token_gates.unsqueeze(-1) * knowledge).to(flat.dtype))
        return FusionOutput(fused.view(batch, length, size), token_gates, edge_gates)


def name_features(embeddings: nn.Embedding, name_ids: torch.Tensor, name_mask: torch.Tensor) -> torch.Tensor:
    """[U, H]: mean word embedding of each name's tokens."""
    vectors = embeddings(name_ids) * name_mask.unsqueeze(-1)
    return vectors.sum(1) / name_mask.sum(1, keepdim=True).clamp(min=1)


class SentenceGraph(Data):
    """A sentence's sub-graph. Triple edges are stored as (centre, other) node pairs so the triple
    gate can read the centre's mention context; both are node indices, shifted when batched."""

    def __inc__(self, key, value, *args, **kwargs):
        if key in ("edge_centre", "edge_other"):
            return self.num_nodes
        if key == "name_of_node":
            return 0
        return super().__inc__(key, value, *args, **kwargs)


def sentence_graph(
    neighbors: dict[str, list[tuple[str, str]]], masked: set[str], names: dict[str, int]
) -> tuple[SentenceGraph, list[str]]:
    """The sub-graph of one sentence: nodes (centres first), their name indices in ``names`` (filled in
    as names are met) and the centre/other node of every triple edge. Returns the graph and its centres."""
    node_of: dict[str, int] = {}
    node_names: list[str] = []

    def node(name: str) -> int:
        if name not in node_of:
            node_of[name] = len(node_names)
            node_names.append(name)
        return node_of[name]

    centres = list(neighbors)
    for name in centres:
        node(name)
    edge_centre, edge_other = [], []
    for name, pairs in neighbors.items():
        for _, other in pairs:
            if other == name:
                continue
            edge_centre.append(node_of[name])
            edge_other.append(node(other))
    name_of_node = [names.setdefault(n, len(names)) for n in node_names]
    data = SentenceGraph(
        num_nodes=len(node_names),
        name_of_node=torch.tensor(name_of_node, dtype=torch.long),
        masked=torch.tensor([n in masked and i < len(centres) for i, n in enumerate(node_names)], dtype=torch.bool),
        edge_centre=torch.tensor(edge_centre, dtype=torch.long),
        edge_other=torch.tensor(edge_other, dtype=torch.long),
    )
    return data, centres


def batch_graphs(graphs: list[SentenceGraph]) -> Batch:
    """One ``Batch`` of the sentence graphs; ``edge_centre``/``edge_other`` are shifted by each graph's offset."""
    return Batch.from_data_list(graphs)


def load_fusion(export_dir: str | Path) -> GatedKnowledgeFusion:
    """The fusion module saved beside an exported backbone (``<export_dir>/knowledge_fusion``)."""
    folder = Path(export_dir) / "knowledge_fusion"
    config = json.loads((folder / "config.json").read_text())
    module = GatedKnowledgeFusion(config["hidden_size"], config["num_layers"], config["dropout"])
    module.load_state_dict(torch.load(folder / "fusion.pt", map_location="cpu", weights_only=True))
    return module
