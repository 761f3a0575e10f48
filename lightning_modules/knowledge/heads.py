"""Small heads and losses of the knowledge objectives (kept apart from the LightningModule)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.knowledge.masking import BIO, IGNORE


class MentionTagger(nn.Module):
    """Token-level O/B/I tags of KG entity mentions."""

    def __init__(self, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, len(BIO))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))


class SpoScorer(nn.Module):
    """A score for ``[CLS] sentence [SEP] s p o [SEP]``: how well the triple fits the sentence."""

    def __init__(self, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.score(self.dropout(cls_state)).squeeze(-1)


def tagging_loss(logits: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tags.reshape(-1), ignore_index=IGNORE)


def margin_loss(scores: torch.Tensor, margin: float = 1.0, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Scores [R, 1 + K], positive first: mean of max(0, margin - s(pos) + s(neg)) over the negatives;
    ``valid`` [R, K] marks the real ones (a row with fewer than K negatives is padded, never repeated)."""
    hinge = F.relu(margin - scores[:, :1] + scores[:, 1:])
    if valid is None:
        return hinge.mean()
    return (hinge * valid).sum() / valid.sum().clamp(min=1)
