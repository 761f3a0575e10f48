"""``stage=fuzzy_pet``: PET with several label-word sets, scored by the masked LM at [MASK] slots.

A row is written into a cloze pattern (``conf/task/<task>.yaml``, ``stage.pattern`` picks one);
each label word of n characters is scored on a copy of the pattern with n [MASK] tokens. The
copies of every distinct word length go through the encoder in one forward pass, stacked along
the batch dimension (``PatternEncoder.encode_stacked``; padding is masked, so each copy scores as
it would alone). ``verbalizer=fuzzy`` pools every set. Training takes the mean over sets of each
set's cross-entropy (within a set, a class's probability is the sum of its words' probabilities),
so the model learns every word of a class; evaluation averages the sets' class distributions
(``stage.pooling=sets``) or sums every word's probability (``words``). chid scores its 7
candidate idioms at the idiom slot (4 masks); cluewsc fills its pattern with span1/span2.
``stage.slots=longest`` trades that exactness for speed: one copy of the row instead of one per word
length, with as many [MASK] tokens as the longest word, a word of n characters scored at the first n
of them (costs of both: docs/fuzzy-pet.md).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.tasks.rows import Row
from datamodules.mlm_texts import MlmText
from datamodules.protocol import TaskData
from datamodules.tasks.task_spec import TaskSpec
from datamodules.errors import ConfigError
from lightning_modules.knowledge.masking import IGNORE
from lightning_modules.scale.optim import Optim
from lightning_modules.scoring.patterns import PatternEncoder, allowed_fields, candidate_ids
from lightning_modules.stages.base import StageModule, StepOutput
from lightning_modules.scoring.submission import submission_rows
from lightning_modules.scoring.verbalizer import (
    AGGREGATIONS,
    CALIBRATED,
    POOLINGS,
    WORD_SCORES,
    Verbalizer,
    adjusted_word_scores,
    class_log_probs,
    pooled_class_log_probs,
    word_log_probs,
    word_logits,
)

log = logging.getLogger(__name__)

# exact: each word on exactly its number of [MASK] slots (a copy of the row per distinct word length, all copies
# in one forward pass); longest: one copy with the longest word's number of slots, a shorter word scored at the
# first of them.
SLOTS = ("exact", "longest")
# What training minimises: pooled (the cross-entropy of the class distribution evaluation scores, stage.pooling's;
# with pooling=words the seed system's probability sum) or per_set (the mean of each set's own cross-entropy).
OBJECTIVES = ("pooled", "per_set")
# verbalizer=fuzzy: every label-word set of the task.
FUZZY = "fuzzy"
# results.json: the untrained cloze's accuracy on the training rows (PET's teacher weight, datamodules/teachers).
TRAIN_ACC_BEFORE = "train/acc_before"


def verbalizer_choice(verbalizer: str | list[str]) -> tuple[str, list[str] | None]:
    """(name, label-word sets) of ``verbalizer``: ``fuzzy`` (every set of the task, pooled), one set's name, or a list of
    names (pooled; named by joining them with +)."""
    if isinstance(verbalizer, str):
        return (verbalizer, None) if verbalizer == FUZZY else (verbalizer, [verbalizer])
    names = [str(name) for name in verbalizer]
    if not names:
        raise ConfigError(f"verbalizer=[]; give {FUZZY}, a label-word set of the task or a list of them")
    return "+".join(names), names


class FuzzyPetModule(StageModule):
    live_arguments = ("task",)
    loss_names = ("cloze", "mlm")
    eval_loss = "cloze"
    zero_shot = True

    def __init__(
        self,
        masked_lm: nn.Module,
        task: TaskSpec,
        tokenizer,
        optim: Optim,
        verbalizer: str | list[str],
        aggregation: str,
        word_score: str,
        pooling: str,
        pattern: int,
        max_length: int,
        mlm_weight: float,
        mlm_max_length: int,
        mask_prob: float,
        debug: bool,
        slots: str,
        objective: str,
    ) -> None:
        if not 0.0 <= mlm_weight < 1.0:
            raise ConfigError(f"stage.mlm_weight={mlm_weight}; allowed: 0 <= mlm_weight < 1")
        # PET's auxiliary loss: (1 - w) * cloze + w * mlm.
        weights = {"cloze": 1.0 - mlm_weight, "mlm": mlm_weight}
        super().__init__(masked_lm, tokenizer, optim, task.num_classes, loss_weights=weights, export_dir=None)
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"stage.aggregation={aggregation!r}; allowed: {list(AGGREGATIONS)}")
        if word_score not in WORD_SCORES:
            raise ConfigError(f"stage.word_score={word_score!r}; allowed: {list(WORD_SCORES)}")
        if pooling not in POOLINGS:
            raise ConfigError(f"stage.pooling={pooling!r}; allowed: {list(POOLINGS)}")
        if slots not in SLOTS:
            raise ConfigError(f"stage.slots={slots!r}; allowed: {list(SLOTS)}")
        if objective not in OBJECTIVES:
            raise ConfigError(f"stage.objective={objective!r}; allowed: {list(OBJECTIVES)}")
        if not task.patterns:
            raise ConfigError(f"task {task.name!r}: task.patterns is empty; give at least one pattern with {{mask}}")
        if isinstance(pattern, bool) or not isinstance(pattern, int) or not 0 <= pattern < len(task.patterns):
            raise ConfigError(f"stage.pattern={pattern!r}; allowed: 0..{len(task.patterns) - 1} "
                              f"(task.patterns of {task.name})")
        self.task = task
        self.verbalizer_name, chosen_sets = verbalizer_choice(verbalizer)
        self.aggregation = aggregation
        self.word_score = word_score
        self.pooling = pooling
        self.slots = slots
        self.objective = objective
        self._prior: torch.Tensor | None = None  # content-free word scores, cached between weight updates
        self.max_length = max_length
        self.mlm_weight = mlm_weight
        self.mlm_max_length = mlm_max_length
        self.mask_prob = mask_prob
        self.debug = debug
        for i, template in enumerate(task.patterns):  # every pattern is validated, not only the chosen one
            PatternEncoder(template, tokenizer, allowed_fields(task), max_length, where=f"task.patterns[{i}]")
        self.pattern_encoder = PatternEncoder(task.patterns[pattern], tokenizer, allowed_fields(task), max_length)

        self.multiple_choice = task.kind == "multiple_choice"
        self.set_names: list[str] = []
        self.results.update(verbalizer=self.verbalizer_name, verbalizer_sets=None, aggregation=aggregation,
                            word_score=word_score, pooling=pooling, slots=slots, objective=objective, pattern=self.pattern_encoder.template)
        if self.multiple_choice:
            self.words = None
            self.lengths: list[int] = []
            if chosen_sets:
                log.info("task %s scores its candidate idioms; verbalizer sets %s do not apply", task.name, chosen_sets)
            if word_score == "calibrated_initial":
                log.warning("task %s: every row has its own candidates, so there is no prior to keep; each row's "
                            "candidates are calibrated with the current weights (as word_score=calibrated)", task.name)
            return
        self.words = Verbalizer(task.verbalizers_for(pattern), task.label_list, tokenizer, task.name)
        used = self.words.select(chosen_sets)
        self.set_names = sorted({self.words.words[i].set_name for i in used}, key=self.words.set_names.index)
        self.results["verbalizer_sets"] = self.set_names
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
        lengths = torch.tensor([len(self.words.words[i].token_ids) for i in self.word_index], dtype=torch.float)
        self.register_buffer("word_lengths", lengths, persistent=False)
        if word_score == "calibrated_initial":
            # The content-free prior of the weights training starts from: NaN until computed, then saved with the
            # weights (a resumed run and predict.py keep the start's prior).
            self.register_buffer("initial_prior", torch.full((len(self.word_index),), float("nan")))
            self._initial_prior_known = False  # a Python flag: no device sync per batch to ask the buffer
            self.register_load_state_dict_post_hook(FuzzyPetModule._initial_prior_loaded)

    # -- masked LM -------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, token_type_ids, mask_positions) -> torch.Tensor:
        """Logits over the vocabulary at the mask slots of one input (``PatternEncoder.encode``): [B, n, V]."""
        (logits,) = self.slot_logits({"input_ids": input_ids, "attention_mask": attention_mask,
                                      "token_type_ids": token_type_ids, "mask_positions": mask_positions,
                                      "num_masks": [mask_positions.shape[1]]})
        return logits

    def slot_logits(self, inputs: dict) -> list[torch.Tensor]:
        """One encoder pass over every group of a stacked input (``PatternEncoder.encode_stacked``): the logits over
        the vocabulary at each group's own n mask slots, [B, n, V] per group in ``num_masks`` order. The MLM head runs
        once, on the real slots only."""
        hidden = self.encode(inputs)  # [K*B, T, H]
        counts = inputs["num_masks"]
        rows = hidden.shape[0] // len(counts)
        slots = hidden.gather(1, inputs["mask_positions"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        real = torch.cat([slots[k * rows : (k + 1) * rows, :n].reshape(rows * n, -1) for k, n in enumerate(counts)])
        logits = self.mlm_head(real)
        return [part.view(rows, n, -1) for part, n in zip(logits.split([rows * n for n in counts]), counts)]

    # -- batches ---------------------------------------------------------------------------------
    def collate(self, rows: list[Row]) -> dict:
        batch: dict = {
            "ids": [row.id for row in rows],
            "labels": torch.tensor([row.label if row.label is not None else IGNORE for row in rows]),
        }
        if self.multiple_choice:
            candidates = candidate_ids(self.tokenizer, rows)
            batch["candidate_ids"] = candidates
            batch["patterns"] = self.pattern_encoder.encode_stacked([row.fields for row in rows], [candidates.shape[-1]])
        else:
            batch["patterns"] = self.pattern_encoder.encode_stacked([row.fields for row in rows], self.encoded_lengths)
        return batch

    @property
    def encoded_lengths(self) -> list[int]:
        """The numbers of [MASK] slots a row is encoded with (one copy of the row per entry, all in one pass)."""
        return self.lengths if self.slots == "exact" else self.lengths[-1:]

    # -- scores ----------------------------------------------------------------------------------
    def joint_scores(self, batch: dict) -> torch.Tensor:
        """[B, W]: log p(word) (or PET's raw word logit for mean_logit) of every word in use, summed over its slots."""
        if self.multiple_choice:
            (logits,) = self.slot_logits(batch["patterns"])
            return self._score(logits, batch["candidate_ids"])
        return self._scores_by_length(batch["patterns"])

    def _scores_by_length(self, patterns: dict) -> torch.Tensor:
        """[B, W]: every length group's words scored on the copy of the row with its own number of slots (exact) or
        on the first n slots of the longest words' copy (longest); one encoder pass either way."""
        groups = self.slot_logits(patterns)
        if self.slots == "longest":
            (longest,) = groups
            parts = [self._score(longest[:, :n], self.group_ids[n]) for n in self.lengths]
        else:
            parts = [self._score(logits, self.group_ids[n]) for logits, n in zip(groups, self.lengths)]
        return torch.cat(parts, dim=-1)

    def _score(self, slot_logits: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
        return word_logits(slot_logits, word_ids) if self.aggregation == "mean_logit" else word_log_probs(slot_logits, word_ids)

    def word_scores(self, batch: dict) -> torch.Tensor:
        """[B, W]: the word scores of ``stage.word_score`` (sum, mean per character, or minus a content-free prior)."""
        prior = self.content_free_scores(batch) if self.word_score in CALIBRATED else None
        return self.adjusted(self.joint_scores(batch), prior, self.slot_counts(batch))

    def slot_counts(self, batch: dict) -> torch.Tensor:
        """[W]: the number of characters (mask slots) of each word in use; chid's candidates share theirs."""
        if self.multiple_choice:
            candidates = batch["candidate_ids"]
            return torch.full((candidates.shape[1],), float(candidates.shape[-1]))
        return self.word_lengths

    def adjusted(self, joint: torch.Tensor, prior: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        return adjusted_word_scores(joint, lengths, self.word_score, prior)

    @torch.no_grad()
    def content_free_scores(self, batch: dict) -> torch.Tensor:
        """Joint word scores on the pattern with every text field emptied: [W] (chid: [B, W], its own candidates).
        calibrated: a constant of the current weights, cached until the next training step; calibrated_initial:
        computed once, from the weights training starts from."""
        if self.multiple_choice:
            candidates = batch["candidate_ids"]
            inputs = self.pattern_encoder.encode_stacked([self._empty_fields()] * len(candidates), [candidates.shape[-1]])
            (logits,) = self.slot_logits(self._on_device(inputs))
            return self._score(logits, candidates)
        if self.word_score == "calibrated_initial":
            if not self._initial_prior_known:
                was_training = self.training
                self.eval()  # kept for the whole run: without dropout noise
                self.initial_prior.copy_(self._content_free_words())
                self.train(was_training)
                self._initial_prior_known = True
            return self.initial_prior
        if self._prior is None or self.training:
            prior = self._content_free_words()
            if self.training:
                return prior
            self._prior = prior
        return self._prior

    @staticmethod
    def _initial_prior_loaded(module: "FuzzyPetModule", incompatible_keys) -> None:
        """Weights were loaded (resume, predict.py): the prior came with them unless the checkpoint had none."""
        module._initial_prior_known = not module.initial_prior.isnan().any().item()

    def _empty_fields(self) -> dict[str, str]:
        return {name: "" for name in self.pattern_encoder.fields}

    def _content_free_words(self) -> torch.Tensor:
        patterns = self.pattern_encoder.encode_stacked([self._empty_fields()], self.encoded_lengths)
        return self._scores_by_length(self._on_device(patterns))[0]

    def _on_device(self, inputs: dict) -> dict:
        return {key: value.to(self.device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}

    def class_log_probs(self, batch: dict) -> torch.Tensor:
        """All words in use pooled per class (all sets under verbalizer=fuzzy)."""
        return self.pooled(self.word_scores(batch))

    def pooled(self, scores: torch.Tensor) -> torch.Tensor:
        if self.multiple_choice:
            return F.log_softmax(scores, dim=-1)
        return pooled_class_log_probs(scores, self.word_classes, self.word_sets, self.task.num_classes, self.aggregation,
                                      self.pooling)

    def step(self, batch: dict) -> StepOutput:
        """Training: the cross-entropy of the pooled class distribution (``objective: pooled``, what evaluation
        scores) or the mean over label-word sets of each set's own (``per_set``); evaluation: the pooled one."""
        scores = self.word_scores(batch)
        labels = batch["labels"]
        if self.training and not self.multiple_choice and self.objective == "per_set":
            return StepOutput({"cloze": self.mean_set_loss(scores, labels)}, targets=labels)
        if self.training:
            return StepOutput({"cloze": F.nll_loss(self.pooled(scores), labels)}, targets=labels)
        log_probs = self.pooled(scores)
        return StepOutput({"cloze": F.nll_loss(log_probs, labels)}, log_probs, targets=labels,
                          metrics=self.set_accuracies(scores, labels))

    def mean_set_loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean over label-word sets of each set's cross-entropy (within a set, p(class) ∝ Σ p(word))."""
        losses = [F.nll_loss(self.set_log_probs(scores, s), labels) for s in range(len(self.set_names))]
        return torch.stack(losses).mean()

    def set_log_probs(self, scores: torch.Tensor, s: int) -> torch.Tensor:
        """[B, C]: the class distribution of label-word set ``s`` on its own words."""
        in_set = self.word_sets == s
        return class_log_probs(scores[:, in_set], self.word_classes[in_set], self.task.num_classes, self.aggregation)

    def set_accuracies(self, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation: every set's own accuracy, ``acc_<set>`` (logged as ``val/acc_<set>``, the quantity a label-word
        sweep compares), whatever the verbalizer pools; the batch mean, weighted by batch size over the epoch."""
        labelled = labels != IGNORE
        if self.multiple_choice or not labelled.any():
            return {}
        return {f"acc_{name}": (self.set_log_probs(scores, s).argmax(-1) == labels)[labelled].float().mean()
                for s, name in enumerate(self.set_names)}

    def predict(self, batch: dict) -> list[dict]:
        return submission_rows(self.task, batch["ids"], self.class_log_probs(batch).argmax(-1).tolist())

    # -- auxiliary masked LM on unlabeled text (PET) ---------------------------------------------
    @property
    def wants_mlm_batches(self) -> bool:
        return self.mlm_weight > 0

    def collate_mlm(self, texts: list[MlmText]) -> dict:
        return self.masked_texts(texts, self.mlm_max_length, self.mask_prob)

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._prior = None  # the weights are about to change

    def on_validation_epoch_start(self) -> None:
        self._prior = None

    def on_test_epoch_start(self) -> None:
        self._prior = None  # the selected checkpoint's weights were just loaded

    def on_predict_epoch_start(self) -> None:
        self._prior = None

    def on_fit_start(self) -> None:
        datamodule: TaskData = self.trainer.datamodule
        rows = datamodule.train_rows
        for line in self.filled_examples(rows[0] if rows else None):
            log.log(logging.INFO if self.debug else logging.DEBUG, "pattern: %s", line)
        if self.mlm_weight > 0 and not datamodule.unlabeled_rows():
            log.warning("task %s has no unlabeled data; the auxiliary MLM loss is skipped", self.task.name)
        if self.global_step == 0 and rows and TRAIN_ACC_BEFORE not in self.results:
            self.results[TRAIN_ACC_BEFORE] = self.accuracy_before_training(rows)

    def accuracy_before_training(self, rows: list[Row]) -> float:
        """The untrained cloze's accuracy on the training rows: PET's weight for this run as a teacher (it says how
        well the pattern and words fit the task before the rows were learnt, with no dev row involved)."""
        probs = self.class_probs(rows, self.trainer.datamodule.eval_batch_size)
        labels = torch.tensor([row.label for row in rows])
        return round(float((probs.argmax(-1) == labels).float().mean()), 6)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if TRAIN_ACC_BEFORE in self.results:  # a resumed run reports what its first start measured
            checkpoint[TRAIN_ACC_BEFORE] = self.results[TRAIN_ACC_BEFORE]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if TRAIN_ACC_BEFORE in checkpoint:
            self.results[TRAIN_ACC_BEFORE] = checkpoint[TRAIN_ACC_BEFORE]

    def filled_examples(self, row: Row | None) -> list[str]:
        """One filled pattern per class (the class's first word in the mask slot), for a sample row."""
        if row is None:
            return []
        if self.multiple_choice:
            return [f"{i}: {self.pattern_encoder.fill(row.fields, c)}" for i, c in enumerate(row.fields["candidates"])]
        return [f"{label}: {self.pattern_encoder.fill(row.fields, word)}" for label, word in self.words.examples().items()]
