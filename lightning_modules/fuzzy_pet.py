"""``stage=fuzzy_pet``: PET with several label-word sets, scored by the masked LM at [MASK] slots.

A row is written into a cloze pattern (``conf/task/<task>.yaml``, ``stage.pattern`` picks one);
each label word of n characters is scored on a copy of the pattern with n [MASK] tokens (one
forward pass per distinct word length, batched over rows). ``verbalizer=fuzzy`` pools every set:
a class's probability is the sum of its words' probabilities. Training takes the mean over sets
of each set's cross-entropy, so the model learns every word of a class. chid scores its 7
candidate idioms at the idiom slot (4 masks); cluewsc fills its pattern with span1/span2.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DataCollatorForLanguageModeling

from datamodules.errors import ConfigError
from datamodules.fewclue_rows import Row
from datamodules.task_spec import TaskSpec
from lightning_modules.patterns import PatternEncoder, allowed_fields, candidate_ids
from lightning_modules.task_module import TaskModule
from lightning_modules.verbalizer import AGGREGATIONS, Verbalizer, class_log_probs, word_log_probs, word_logits

log = logging.getLogger(__name__)


class FuzzyPetModule(TaskModule):
    def __init__(
        self,
        masked_lm: nn.Module,
        task: TaskSpec,
        tokenizer,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable | None = None,
        verbalizer: dict | None = None,
        aggregation: str = "sum_prob",
        pattern: int = 0,
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        max_length: int = 160,
        mlm_weight: float = 0.0,
        mlm_batch_size: int = 8,
        mlm_probability: float = 0.15,
        debug: bool = False,
    ) -> None:
        # A plain dict (not a DictConfig) so the checkpoint's hyperparameters load with weights_only.
        verbalizer = _plain(verbalizer) if verbalizer is not None else {"name": "fuzzy", "sets": None}
        super().__init__(task, tokenizer, optimizer, scheduler, lr, weight_decay, max_length)
        self.save_hyperparameters(ignore=["masked_lm", "task", "tokenizer", "optimizer", "scheduler"])
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"stage.aggregation={aggregation!r}; allowed: {list(AGGREGATIONS)}")
        if not 0.0 <= mlm_weight < 1.0:
            raise ConfigError(f"stage.mlm_weight={mlm_weight}; allowed: 0 <= mlm_weight < 1")
        if not task.patterns:
            raise ConfigError(f"task {task.name!r}: task.patterns is empty; give at least one pattern with {{mask}}")
        if not 0 <= pattern < len(task.patterns):
            raise ConfigError(f"stage.pattern={pattern}; allowed: 0..{len(task.patterns) - 1} (task.patterns of {task.name})")
        self.verbalizer_name = str(verbalizer.get("name", "fuzzy"))
        self.aggregation = aggregation
        self.masked_lm = masked_lm
        self.mlm_weight = mlm_weight
        self.mlm_batch_size = mlm_batch_size
        self.mlm_probability = mlm_probability
        self.debug = debug
        self.results_extra: dict = {}
        self.unlabeled_texts: list[str] = []
        for i, template in enumerate(task.patterns):  # every pattern is validated, not only the chosen one
            PatternEncoder(template, tokenizer, allowed_fields(task), max_length, where=f"task.patterns[{i}]")
        self.encoder = PatternEncoder(task.patterns[pattern], tokenizer, allowed_fields(task), max_length)

        self.multiple_choice = task.kind == "multiple_choice"
        if self.multiple_choice:
            self.words = None
            self.lengths: list[int] = []
            if verbalizer.get("sets"):
                log.info("task %s scores its candidate idioms; verbalizer sets %s do not apply", task.name, verbalizer["sets"])
            return
        self.words = Verbalizer(task.verbalizers, task.label_list, tokenizer, task.name)
        used = self.words.select(verbalizer.get("sets"))
        self.set_names = sorted({self.words.words[i].set_name for i in used}, key=self.words.set_names.index)
        self.lengths = sorted({len(self.words.words[i].token_ids) for i in used})
        # Words in the order they are scored: grouped by length, then in table order.
        self.word_index = [i for n in self.lengths for i in self.words.group(n) if i in set(used)]
        self.group_ids = {
            n: torch.tensor([self.words.words[i].token_ids for i in self.word_index if len(self.words.words[i].token_ids) == n])
            for n in self.lengths
        }
        self.register_buffer("word_classes", self.words.classes[self.word_index], persistent=False)
        sets = torch.tensor([self.set_names.index(self.words.words[i].set_name) for i in self.word_index])
        self.register_buffer("word_sets", sets, persistent=False)

    # -- masked LM -------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, token_type_ids, mask_positions) -> torch.Tensor:
        """Logits over the vocabulary at the mask slots: [B, n, V]."""
        model = self.masked_lm
        if hasattr(model, "bert") and hasattr(model, "cls"):  # BERT: run the MLM head on the slots only
            hidden = model.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            slots = hidden.gather(1, mask_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            return model.cls(slots)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
        return logits.gather(1, mask_positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))

    # -- batches ---------------------------------------------------------------------------------
    def collate(self, rows: list[Row]) -> dict:
        batch: dict = {
            "ids": [row.id for row in rows],
            "labels": torch.tensor([row.label if row.label is not None else -100 for row in rows]),
        }
        if self.multiple_choice:
            candidates = candidate_ids(self.tokenizer, rows)
            batch["candidate_ids"] = candidates
            batch["patterns"] = self.encoder.encode([row.fields for row in rows], [candidates.shape[-1]])
        else:
            batch["patterns"] = self.encoder.encode([row.fields for row in rows], self.lengths)
        return batch

    # -- scores ----------------------------------------------------------------------------------
    def word_scores(self, batch: dict) -> torch.Tensor:
        """[B, W]: log p(word) (or PET's raw word logit for mean_logit) of every word in use."""
        score = word_logits if self.aggregation == "mean_logit" else word_log_probs
        if self.multiple_choice:
            (inputs,) = batch["patterns"].values()
            return score(self(**inputs), batch["candidate_ids"])
        parts = [score(self(**batch["patterns"][n]), self.group_ids[n]) for n in self.lengths]
        return torch.cat(parts, dim=-1)

    def class_log_probs(self, batch: dict) -> torch.Tensor:
        """All words in use pooled per class (all sets under verbalizer=fuzzy)."""
        scores = self.word_scores(batch)
        if self.multiple_choice:
            return F.log_softmax(scores, dim=-1)
        return class_log_probs(scores, self.word_classes, self.task.num_classes, self.aggregation)

    def training_loss(self, batch: dict) -> torch.Tensor:
        scores = self.word_scores(batch)
        if self.multiple_choice:
            loss = F.nll_loss(F.log_softmax(scores, dim=-1), batch["labels"])
        else:  # mean over label-word sets of each set's cross-entropy
            losses = []
            for s in range(len(self.set_names)):
                in_set = self.word_sets == s
                log_probs = class_log_probs(scores[:, in_set], self.word_classes[in_set], self.task.num_classes, self.aggregation)
                losses.append(F.nll_loss(log_probs, batch["labels"]))
            loss = torch.stack(losses).mean()
        if self.mlm_weight > 0 and self.unlabeled_texts:
            mlm = self.mlm_loss(random.sample(self.unlabeled_texts, min(self.mlm_batch_size, len(self.unlabeled_texts))))
            self.log("train/mlm_loss", mlm, batch_size=len(batch["ids"]))
            loss = (1 - self.mlm_weight) * loss + self.mlm_weight * mlm
        return loss

    def mlm_loss(self, texts: list[str]) -> torch.Tensor:
        """PET's auxiliary language-modelling loss on unlabeled text (15% masking, 80/10/10)."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        collator = DataCollatorForLanguageModeling(self.tokenizer, mlm_probability=self.mlm_probability, return_tensors="pt")
        inputs = collator([{k: encoded[k][i] for k in encoded} for i in range(len(texts))])
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return self.masked_lm(**inputs).loss

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        rows = getattr(datamodule, "train_rows", None) or []
        for line in self.filled_examples(rows[0] if rows else None):
            log.log(logging.INFO if self.debug else logging.DEBUG, "pattern: %s", line)
        if self.mlm_weight > 0:
            unlabeled = datamodule.unlabeled_rows() if hasattr(datamodule, "unlabeled_rows") else []
            self.unlabeled_texts = [" ".join(str(v) for k, v in r.fields.items() if k in self.task.text_fields) for r in unlabeled]
            if not self.unlabeled_texts:
                log.warning("task %s has no unlabeled data; the auxiliary MLM loss is skipped", self.task.name)

    def filled_examples(self, row: Row | None) -> list[str]:
        """One filled pattern per class (the class's first word in the mask slot), for a sample row."""
        if row is None:
            return []
        if self.multiple_choice:
            return [f"{i}: {self.encoder.fill(row.fields, c)}" for i, c in enumerate(row.fields["candidates"])]
        return [f"{label}: {self.encoder.fill(row.fields, word)}" for label, word in self.words.examples().items()]

    def extra_results(self) -> dict:
        return {
            "verbalizer": self.verbalizer_name,
            "verbalizer_sets": None if self.multiple_choice else self.set_names,
            "aggregation": self.aggregation,
            "pattern": self.encoder.template,
            **self.results_extra,
        }


def _plain(node) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
