"""The stage contract (lightning_modules/stages/base.py): a stage added by following docs/adding-a-stage.md
literally trains through train.py, saves its settings without the live objects, reloads from its checkpoint
without Hydra and writes its leaderboard file; every stage of conf/stage saves exactly its settings; callbacks
use only what the base declares."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.tasks.rows import Row
from datamodules.tasks.task_spec import TaskSpec
from lightning_modules.encoders.char_vocab import char_tokenizer
from lightning_modules.knowledge.masking import IGNORE
from lightning_modules.scale.optim import Optim
from lightning_modules.scoring.submission import submission_rows
from lightning_modules.stages.base import StageModule, StepOutput
from tests.conftest import ROOT, compose_config
from tests.helpers import read_jsonl, stage_module
from train import build, instantiate_with, run


# -- the stage of docs/adding-a-stage.md, as the page writes it --------------------------------------------------
class MeanPoolModule(StageModule):
    live_arguments = ("task",)  # live objects besides the base's masked_lm, tokenizer, optim
    loss_names = ("cls",)       # the losses stage.loss_weights may weigh
    eval_loss = "cls"           # logged as val/loss and test/loss

    def __init__(self, masked_lm: nn.Module, tokenizer, optim: Optim, task: TaskSpec, max_length: int,
                 dropout: float) -> None:
        super().__init__(masked_lm.base_model, tokenizer, optim, task.num_classes, loss_weights={"cls": 1.0},
                         export_dir=None)
        self.task = task
        self.max_length = max_length
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.config.hidden_size, task.num_classes))

    def collate(self, rows: list[Row]) -> dict:
        fields = self.task.text_fields
        first = [row.fields[fields[0]] for row in rows]
        second = [row.fields[fields[1]] for row in rows] if len(fields) > 1 else None
        inputs = self.tokenizer(first, second, truncation=True, max_length=self.max_length, padding=True,
                                return_tensors="pt")
        labels = torch.tensor([row.label if row.label is not None else IGNORE for row in rows])
        return {"inputs": dict(inputs), "labels": labels, "ids": [row.id for row in rows]}

    def class_log_probs(self, batch: dict) -> torch.Tensor:
        hidden = self.encode(batch["inputs"])
        mask = batch["inputs"]["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return F.log_softmax(self.head((hidden * mask).sum(1) / mask.sum(1)).float(), dim=-1)

    def step(self, batch: dict) -> StepOutput:
        log_probs = self.class_log_probs(batch)
        return StepOutput({"cls": F.nll_loss(log_probs, batch["labels"])}, log_probs, targets=batch["labels"])

    def predict(self, batch: dict) -> list[dict]:
        return submission_rows(self.task, batch["ids"], self.class_log_probs(batch).argmax(-1).tolist())


# The page's YAML; only _target_ differs (the class lives in this test module, however pytest imported it).
STAGE_YAML = f"""\
# A mean of the encoder's hidden states, then a linear layer.
_target_: {MeanPoolModule.__module__}.MeanPoolModule
task: ${{task}}
max_length: 128
dropout: 0.1
optim:
  lr: 1e-3
"""


@pytest.fixture
def mean_pool_run(tmp_path, shared_fewclue):
    conf = tmp_path / "conf" / "stage"
    conf.mkdir(parents=True)
    (conf / "mean_pool.yaml").write_text(STAGE_YAML, encoding="utf-8")
    cfg = compose_config([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "stage=mean_pool", "task=eprstmt",
                          "trainer.max_epochs=2", "data.batch_size=16", "trainer.limit_predict_batches=1"],
                         tmp_path / "run", shared_fewclue)
    built = build(cfg)
    return built, run(built)


def test_a_stage_added_by_the_recipe_trains_reloads_and_writes_its_leaderboard_file(mean_pool_run, shared_fewclue):
    built, results = mean_pool_run
    module, datamodule = built.module, built.datamodule
    assert type(module) is MeanPoolModule and results["stage"] == "mean_pool"
    # It trains: eprstmt split 0 has 32 training rows, 2 batches of 16 per epoch, 2 epochs.
    assert results["global_step"] == built.trainer.global_step == 4
    assert results["train/loss_cls"] == results["train/loss"] > 0  # one loss, weight 1
    # val/acc is the share of the 32 dev rows predicted right.
    val_rows = len(datamodule.val_rows)
    assert val_rows == 32 and isinstance(results["val/acc"], float)
    assert results["val/acc"] * val_rows == pytest.approx(round(results["val/acc"] * val_rows), abs=1e-4)

    # The settings were saved by the base without any call in the stage, and without the live objects.
    settings = {"max_length": 128, "dropout": 0.1}
    assert dict(module.hparams) == settings
    saved = Path(built.cfg.paths.output_dir) / results["checkpoint"]  # (an absolute path stays itself)
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)  # plain values only
    assert checkpoint["hyper_parameters"] == settings

    # The checkpoint reloads without Hydra: the settings come from it, the live objects are given again.
    fresh_lm = built.backbone.masked_lm(module.tokenizer)
    reloaded = MeanPoolModule.load_from_checkpoint(saved, masked_lm=fresh_lm, tokenizer=module.tokenizer,
                                                   optim=module.optim, task=built.task, weights_only=True)
    assert dict(reloaded.hparams) == settings and reloaded.max_length == 128
    trained = module.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in reloaded.state_dict().items())
    (validated,) = built.trainer.validate(reloaded, datamodule=datamodule, verbose=False)
    assert validated["val/acc"] == pytest.approx(results["val/acc"], abs=1e-6)

    # The leaderboard file: named by the DataModule's task, one row per predicted test.json row (one batch).
    path = Path(built.cfg.paths.output_dir) / "predictions" / built.task.prediction_file
    assert path.name == "eprstmt_predict.json"
    rows = read_jsonl(path)
    test_ids = {row["id"] for row in read_jsonl(shared_fewclue / "eprstmt" / "test.json")}
    first_batch = next(iter(datamodule.predict_dataloader()))
    assert len(rows) == module.batch_size(first_batch) == len(first_batch["ids"]) < len(test_ids)
    assert [row["id"] for row in rows] == sorted(first_batch["ids"], key=[r.id for r in datamodule.predict_rows].index)
    assert {row["label"] for row in rows} <= {"Positive", "Negative"}


def test_the_batch_size_is_the_leading_dimension_of_the_first_tensor(tmp_path, shared_fewclue):
    module = _mean_pool(tmp_path, shared_fewclue)
    rows = [Row(id=i, fields={"sentence": "好" * (i + 1)}, label=i % 2, path="rows.json", line=i + 1) for i in range(5)]
    batch = module.collate(rows)
    assert module.batch_size(batch) == 5  # inputs.input_ids [5, L], whatever follows
    assert module.batch_size({"ids": [1, 2, 3], "labels": torch.zeros(3), "inputs": {"input_ids": torch.zeros(7, 2)}}) == 3
    assert module.batch_size({"scale": torch.tensor(2.0), "pairs": [(torch.zeros(4, 3),)]}) == 4  # 0-d tensors skipped
    with pytest.raises(TypeError, match="holds no tensor.*override batch_size"):
        module.batch_size({"ids": [1, 2]})


def test_a_live_object_is_declared_once_per_class_and_an_undeclared_one_fails_naming_it(tmp_path, shared_fewclue):
    class WithTeacher(MeanPoolModule):
        def __init__(self, masked_lm: nn.Module, tokenizer, optim: Optim, task: TaskSpec, max_length: int,
                     dropout: float, teacher: nn.Module) -> None:
            super().__init__(masked_lm, tokenizer, optim, task, max_length, dropout)
            self.teacher = teacher

    class DeclaredTeacher(WithTeacher):
        live_arguments = ("teacher",)

    assert MeanPoolModule.live_argument_names() == {"masked_lm", "tokenizer", "optim", "task"}
    assert DeclaredTeacher.live_argument_names() == {"masked_lm", "tokenizer", "optim", "task", "teacher"}
    arguments = _mean_pool_arguments(tmp_path, shared_fewclue)
    with pytest.raises(TypeError, match=r"argument 'teacher' is a Linear, not a plain setting: name it in "
                                        r"WithTeacher.live_arguments"):
        WithTeacher(**arguments, teacher=nn.Linear(2, 2))
    module = DeclaredTeacher(**arguments, teacher=nn.Linear(2, 2))
    # Saved once, by the outermost constructor, with its own arguments (the parent's run inside it).
    assert dict(module.hparams) == {"max_length": 16, "dropout": 0.0}
    assert list(inspect.signature(DeclaredTeacher).parameters)[-1] == "teacher"  # Hydra and Lightning read this


STAGES = ["finetune", "fuzzy_pet", "efl", "kgbert", "mlm", "entailment"]  # distill: tests/test_distill.py (needs teachers)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_saves_exactly_its_settings_as_plain_values(stage, tmp_path, shared_fewclue):
    from tests.test_kgbert import tiny_masked_lm

    task = instantiate_with(compose_config([], tmp_path / "task", shared_fewclue).task)
    tokenizer = char_tokenizer([*task.patterns, *task.label_words(), *task.descriptions.values()], tmp_path / "cache")
    module = stage_module(stage, tiny_masked_lm(tokenizer, hidden=32), tokenizer, tmp_path / "run")
    cfg = compose_config([f"stage={stage}"], tmp_path / "run", shared_fewclue)
    expected = {key: value for key, value in json.loads(json.dumps(_resolved(cfg.stage))).items()
                if key in inspect.signature(type(module)).parameters and key not in type(module).live_argument_names()}
    assert dict(module.hparams) == expected and expected
    assert not set(module.hparams) & {"masked_lm", "tokenizer", "optim", "task", "teachers"}
    path = tmp_path / "hparams.pt"
    torch.save(dict(module.hparams), path)
    assert torch.load(path, weights_only=True) == expected  # what a checkpoint holds reloads with weights_only


def test_callbacks_use_only_what_the_base_declares():
    """No callback reads a stage's own attributes (``pl_module.task`` and the like): only the methods, properties
    and attributes that StageModule (or LightningModule) itself defines."""
    base_source = ast.parse(inspect.getsource(StageModule))
    instance = {node.attr for node in ast.walk(base_source)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                and isinstance(node.ctx, ast.Store)}
    declared = set(dir(StageModule)) | instance
    used = []
    for path in sorted((ROOT / "callbacks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id in ("pl_module", "module")) or (
                    isinstance(owner, ast.Attribute) and owner.attr == "lightning_module"):
                used.append((path.name, node.attr))
    assert used and [(name, attr) for name, attr in used if attr not in declared] == []


# -- helpers ----------------------------------------------------------------------------------------------------
def _mean_pool_arguments(tmp_path: Path, shared_fewclue: Path) -> dict:
    from tests.test_kgbert import tiny_masked_lm

    cfg = compose_config([], tmp_path / "run", shared_fewclue)
    task = instantiate_with(cfg.task)
    tokenizer = char_tokenizer(["好不好", *task.label_words()], tmp_path / "cache")
    optim = instantiate_with(cfg.stage.optim)
    return {"masked_lm": tiny_masked_lm(tokenizer, hidden=32), "tokenizer": tokenizer, "optim": optim, "task": task,
            "max_length": 16, "dropout": 0.0}


def _mean_pool(tmp_path: Path, shared_fewclue: Path) -> MeanPoolModule:
    return MeanPoolModule(**_mean_pool_arguments(tmp_path, shared_fewclue))


def _resolved(node) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)
