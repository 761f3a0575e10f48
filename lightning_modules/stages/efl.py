"""``stage=efl``: a task's classifier as entailment (EFL): each row paired with every class, the best-entailed wins.

A row becomes one ``[CLS] text [SEP] description [SEP]`` pair per class, built by the entailment pretraining's own
rule (``datamodules.pretraining.entailment.pairs_for_row``, the row read as if each class were its label):
classification tasks pair the row's text (fields joined with ``；``) with each label's description
(``descriptions`` in conf/task/<task>.yaml; ocnli too, three pairs), chid pairs the text with the blank with each
candidate (``stage.chid_description``). cluewsc has one statement for both classes (``stage.wsc_description``),
so its rows have one pair, entailed for the class ``true``.

The entailment head (dropout, a linear layer to not-entailed / entailed on ``[CLS]``, the shape
``stage=entailment`` exports) gives each pair a score: the log-odds of "entailed", ``logit_entailed -
logit_not_entailed``, so that sigmoid(score) is the head's entailment probability. The class distribution of a row
is the softmax over its pairs' scores (training: its cross-entropy); the class is the pair with the highest score,
which is the highest entailment probability, ``stage=entailment``'s ``row_decisions`` rule. A one-pair row's two
classes get sigmoid(score) and 1 - sigmoid(score) (training: binary cross-entropy).

Start from an entailment export with ``model=hf model.pretrained=<export>``: ``stage.head`` names the head's weights
(``<export>/entailment_head/head.pt``); null takes that file from the ``model.pretrained`` folder where there is one,
and a new head otherwise.
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.errors import ConfigError
from datamodules.pretraining.entailment import EntailmentPair, pairs_for_row
from datamodules.tasks.rows import Row
from datamodules.tasks.task_spec import TaskSpec
from lightning_modules.knowledge.masking import IGNORE
from lightning_modules.scale.optim import Optim
from lightning_modules.scoring.submission import submission_rows
from lightning_modules.stages.base import StageModule, StepOutput

log = logging.getLogger(__name__)

# Where stage=entailment writes its head, inside its export folder.
EXPORTED_HEAD = "entailment_head/head.pt"
# results.json "efl/head": where the head's starting weights came from.
HEAD_SOURCES = ("stage.head", f"model.pretrained/{EXPORTED_HEAD}", "fresh")


def row_pairs(task: TaskSpec, row: Row, chid_description: str,
              wsc_description: str) -> tuple[list[EntailmentPair], int | None]:
    """The pairs a row is classified by and, for a one-pair row, the class its entailment stands for (else None).

    Pair c is ``pairs_for_row`` of the row as if class c were its label, with no sampled negatives. When every class
    gives the same pair (cluewsc: one statement about the spans), the row has that one pair, and the class for which
    ``pairs_for_row`` calls it entailed is the one its entailment stands for; otherwise pair c stands for class c."""
    candidates = [pairs_for_row(task, replace(row, label=c), random.Random(0), 0, None, chid_description,
                                wsc_description)[0] for c in range(task.num_classes)]
    if len({(p.text, p.description) for p in candidates}) > 1:
        return candidates, None
    entailed = [c for c, p in enumerate(candidates) if p.label == 1]
    if task.num_classes != 2 or len(entailed) != 1:
        raise ConfigError(f"stage=efl: task {task.name} gives one pair for all its {task.num_classes} classes, "
                          f"entailed for {len(entailed)} of them; a one-pair task needs two classes, one entailed")
    return candidates[:1], entailed[0]


def class_log_probs_of_scores(scores: torch.Tensor, entailed_class: int | None) -> torch.Tensor:
    """[B, C] class log-probabilities from [B, K] pair scores (log-odds of entailment): the log-softmax over a row's
    pairs; for one-pair rows (K = 1), log sigmoid(score) for ``entailed_class`` and log sigmoid(-score) for the
    other."""
    if entailed_class is None:
        return F.log_softmax(scores, dim=-1)
    score = scores[:, 0]
    both = [F.logsigmoid(-score), F.logsigmoid(score)]
    return torch.stack(both if entailed_class == 1 else both[::-1], dim=-1)


def load_head(head: nn.Module, path: Path, key: str) -> None:
    """The state of ``head`` from ``path`` (a ``torch.save`` of an entailment head's state_dict); a ConfigError in one
    line, naming ``key`` and the file, when there is none or it does not fit."""
    fix = "give the entailment_head/head.pt that stage=entailment exported with a backbone of this hidden size"
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is not a file; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a file of another kind fails in many ways
        raise ConfigError(f"{key}: {path} is not a saved head ({type(err).__name__}); {fix}") from None
    wanted = {name: tuple(t.shape) for name, t in head.state_dict().items()}
    found = ({name: tuple(t.shape) for name, t in state.items() if isinstance(t, torch.Tensor)}
             if isinstance(state, dict) else {})
    if found != wanted:
        raise ConfigError(f"{key}: {path} holds {found or type(state).__name__}; the head on this backbone is "
                          f"{wanted} (dropout, linear hidden_size -> 2); {fix}")
    head.load_state_dict(state)


class EflModule(StageModule):
    live_arguments = ("task",)
    loss_names = ("cls",)
    eval_loss = "cls"
    # Scoring a task with the entailment head of an export means something untrained (a new head does not:
    # setup refuses trainer.max_epochs=0 then).
    zero_shot = True

    def __init__(
        self,
        masked_lm: nn.Module,
        task: TaskSpec,
        tokenizer,
        optim: Optim,
        max_length: int,
        dropout: float,
        head: str | None,
        chid_description: str,
        wsc_description: str,
    ) -> None:
        # The MLM head is left out, as in stage=finetune: it would be trained nowhere (and break DDP).
        super().__init__(masked_lm.base_model, tokenizer, optim, task.num_classes, loss_weights={self.eval_loss: 1.0},
                         export_dir=None)
        self.task = task
        self.max_length = max_length
        for key, template, fields in (("chid_description", chid_description, ("candidate",)),
                                      ("wsc_description", wsc_description, ("span1", "span2"))):
            try:
                template.format(**{f: "x" for f in fields})
            except (KeyError, IndexError) as err:
                raise ConfigError(f"stage.{key}={template!r} uses {err}; allowed placeholders: "
                                  f"{list(fields)}") from None
        if task.kind == "classification":
            missing = [name for name in task.label_list if name not in task.descriptions]
            if missing:
                raise ConfigError(f"stage=efl: conf/task/{task.name}.yaml descriptions has no entry for label(s) "
                                  f"{missing}; the classifier pairs each row with every label's description")
        self.chid_description = chid_description
        self.wsc_description = wsc_description
        # The shape stage=entailment exports (its state_dict loads as it is).
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.config.hidden_size, 2))
        self.head_source = self._start_head(head, masked_lm.name_or_path)
        self.results["efl/head"] = self.head_source

    def _start_head(self, head: str | None, pretrained: str) -> str:
        if head is not None:
            load_head(self.head, Path(head), "stage.head")
            return HEAD_SOURCES[0]
        beside = Path(pretrained) / EXPORTED_HEAD if pretrained else None
        if beside is not None and beside.is_file():
            load_head(self.head, beside, "stage.head=null (the entailment head beside model.pretrained)")
            log.info("stage.head=null: starting from the entailment head beside model.pretrained, %s", beside)
            return HEAD_SOURCES[1]
        return HEAD_SOURCES[2]

    def setup(self, stage: str) -> None:
        """Refuse to evaluate a new head untrained (the class allows zero-shot runs for an exported head)."""
        trainer = self.trainer
        untrained = trainer.max_epochs == 0 or trainer.max_steps == 0
        if stage == "fit" and untrained and self.head_source == "fresh":
            raise ConfigError("trainer.max_epochs=0 with stage=efl and a new head would predict with random weights; "
                              "start from an entailment export (model=hf model.pretrained=<entailment run>/export) "
                              "or train (trainer.max_epochs >= 1)")

    def forward(self, inputs: dict) -> torch.Tensor:
        """Each pair's score: the log-odds of entailment from the head on [CLS]."""
        logits = self.head(self.encode(inputs)[:, 0]).float()
        return logits[:, 1] - logits[:, 0]

    # -- batches -------------------------------------------------------------------------------
    def collate(self, rows: list[Row]) -> dict:
        """The rows' pairs, row after row (K per row: the classes, or one), and one label per row (first: the base
        counts a batch's rows by it)."""
        pairs, entailed = [], set()
        for row in rows:
            of_row, entailed_class = row_pairs(self.task, row, self.chid_description, self.wsc_description)
            pairs += of_row
            entailed.add(entailed_class)
        inputs = self.tokenizer([p.text for p in pairs], [p.description for p in pairs], truncation="only_first",
                                max_length=self.max_length, padding=True, return_tensors="pt")
        return {"labels": torch.tensor([row.label if row.label is not None else IGNORE for row in rows]),
                "inputs": dict(inputs), "entailed_class": entailed.pop() if entailed else None,
                "ids": [row.id for row in rows]}

    # -- scores ----------------------------------------------------------------------------------
    def class_log_probs(self, batch: dict) -> torch.Tensor:
        scores = self(batch["inputs"]).view(len(batch["labels"]), -1)
        return class_log_probs_of_scores(scores, batch["entailed_class"])

    def step(self, batch: dict) -> StepOutput:
        log_probs = self.class_log_probs(batch)
        return StepOutput({"cls": F.nll_loss(log_probs, batch["labels"], ignore_index=IGNORE)}, log_probs,
                          targets=batch["labels"])

    def predict(self, batch: dict) -> list[dict]:
        return submission_rows(self.task, batch["ids"], self.class_log_probs(batch).argmax(-1).tolist())
