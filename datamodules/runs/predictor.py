"""A finished train.py run's model, rebuilt to classify rows: predict.py's and the distillation teachers' one copy.

``Predictor.load(run_dir)`` rebuilds the run's model from its resolved ``config.yaml`` (the same config groups
train.py instantiates) and loads the checkpoint the run selected on dev (results.json ``checkpoint``, inside the
run folder), or a given checkpoint file or export folder; ``class_log_probs(rows)`` scores task rows in the run's
evaluation batches; ``predict(rows)`` gives predict.py's records.

Imports stay layered: this package does not import ``lightning_modules`` at import time; the stage module is
instantiated through its ``_target_``, and the device rule (``lightning_modules.scale.devices``, torch only) is
imported where it is used.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from datamodules.errors import ConfigError
from datamodules.runs.build import check_checkpoint, instantiate_with, vocabulary_texts
from datamodules.runs.results import CONFIG_FILE, RESULTS_FILE, RunFolder
from datamodules.runs.saved_config import follow_moved_modules, upgrade_saved_config
from datamodules.tasks.rows import Row
from datamodules.tasks.task_spec import TaskSpec

if TYPE_CHECKING:
    from lightning_modules.stages.base import StageModule

ROOT = Path(__file__).resolve().parents[2]


class MissingCheckpoint(ConfigError):
    """The run kept no checkpoint (``keep_checkpoints=false``) or it was deleted since."""


# Probabilities in the output, rounded: more digits are noise (bf16 evaluation, batch padding).
PROB_DIGITS = 4


class Predictor:
    """A run's stage module with its selected weights, in eval mode, and the task it classifies."""

    def __init__(self, cfg: DictConfig, task: TaskSpec, module: StageModule, device: torch.device, source: str) -> None:
        self.cfg = cfg
        self.task = task
        self.module = module
        self.device = device
        self.source = source  # where the weights came from

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str | None = None, device: str = "auto",
             starting_weights: bool = False) -> Predictor:
        """The run's module with its selected checkpoint, ``checkpoint`` (a file or an export folder) in its place,
        or with ``starting_weights`` the weights its training started from (the encoder before any update)."""
        run_dir = Path(run_dir)
        cfg, folder = run_config(run_dir)
        task = instantiate_with(cfg.task)
        if task.kind != "multiple_choice" and not task.labels:
            raise ConfigError(f"{run_dir}: task {task.name} has no labels to predict")
        source = None if starting_weights else checkpoint or selected_weights(folder)
        # Messages about the weights name them where they came from: the user's --checkpoint, or the run's own.
        named = f"--checkpoint {checkpoint}" if checkpoint else f"{run_dir}: its selected checkpoint {source}"
        export = source is not None and Path(source).is_dir() and (Path(source) / "config.json").is_file()
        if export:
            # An export folder (save_pretrained) holds the masked LM and its tokenizer: build model=hf on it.
            model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "hf.yaml")
            model_cfg.pretrained = str(source)
            backbone = instantiate_with(model_cfg)
            tokenizer = backbone.tokenizer()
        else:
            backbone = instantiate_with(cfg.model)
            tokenizer = _run_tokenizer(run_dir, cfg, task, backbone)
        # A zero-shot run's untrained parts are drawn as train.py drew them; the caller's random state is left as it
        # was (a distillation scores its teachers in the middle of its own setup).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            module: StageModule = instantiate_with(cfg.stage, masked_lm=backbone.masked_lm(tokenizer),
                                                   tokenizer=tokenizer)
        if export:
            _check_export_covers(module, Path(source), named)
        elif source is not None:
            _load_weights(module, Path(source), named)
        module.eval()
        target = _device(device, cfg)
        module.to(target)
        module.to(_evaluation_dtype(cfg, target))  # what the run's own evaluation and leaderboard file used
        untrained = "the starting weights" if starting_weights else "the untrained model (zero-shot run)"
        return cls(cfg, task, module, target, str(source) if source else untrained)

    def class_log_probs(self, rows: list[Row], batch_size: int | None = None,
                        progress: TextIO | None = None) -> torch.Tensor:
        """[N, C] class log-probabilities (float32, on the CPU) of ``rows``, in the rows' order. Batches are the run's
        evaluation batches (``data.eval_batch_size`` rows, longest first: LengthOrder)."""
        out = self.scores(rows, self.module.class_log_probs, batch_size, progress)
        broken = torch.isnan(out).any(-1) | ~torch.isfinite(out).any(-1)
        if broken.any():
            bad = int(broken.sum())
            raise ConfigError(f"{self.source}: {bad} of {len(rows)} row(s) got no finite class probability; the "
                              "weights are damaged")
        return out

    def scores(self, rows: list[Row], score: Callable[[dict], torch.Tensor], batch_size: int | None = None,
               progress: TextIO | None = None) -> torch.Tensor:
        """[N, ...] ``score(batch)`` (one of the module's scoring methods) of every row, float32 on the CPU, in the
        rows' order, computed in the run's evaluation batches."""
        from lightning.fabric.utilities.apply_func import move_data_to_device
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        from datamodules.epoch_shuffle import LengthOrder
        from datamodules.tasks.fewclue import TaskRowsDataModule

        size = batch_size or int(self.cfg.data.eval_batch_size)
        sampler = LengthOrder([TaskRowsDataModule.text_length(row) for row in rows])
        loader = DataLoader(rows, batch_size=size, sampler=sampler, collate_fn=self.module.collate)
        order = list(sampler)
        parts = []
        bar = tqdm(loader, desc="predict", unit="batch", file=progress, disable=progress is None or len(loader) <= 1)
        with torch.no_grad(), self._autocast():
            for batch in bar:
                try:
                    parts.append(score(move_data_to_device(batch, self.device)).float().cpu())
                except NotImplementedError as err:
                    raise ConfigError(f"stage {type(self.module).__name__} does not classify rows ({err})") from None
        if not parts:
            return torch.empty(0, 0)
        out = torch.empty(len(rows), *parts[0].shape[1:])
        out[order] = torch.cat(parts)
        return out

    def predict(self, rows: list[Row], batch_size: int | None = None, progress: TextIO | None = sys.stderr):
        """One output record per row, in the rows' order: the official label, its name and the class probabilities."""
        log_probs = self.class_log_probs(rows, batch_size, progress)
        probs = torch.softmax(log_probs.double(), dim=-1)
        return [self.record(row, choice, [round(p, PROB_DIGITS) for p in row_probs.tolist()])
                for row, choice, row_probs in zip(rows, log_probs.argmax(-1).tolist(), probs)]

    def record(self, row: Row, choice: int, probs: list[float]) -> dict[str, Any]:
        task = self.task
        out: dict[str, Any] = {} if row.id_from_line else {"id": row.id}
        out["label"] = task.official_label(choice)
        if task.kind == "multiple_choice":
            out["label_name"] = row.fields["candidates"][choice]
            out["probs"] = {str(c): p for c, p in enumerate(probs)}
        else:
            out["label_name"] = task.labels[task.label_list[choice]]
            out["probs"] = dict(zip(task.label_list, probs))
        return out

    def _autocast(self):
        precision = str(self.cfg.trainer.get("precision"))
        if precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if precision == "16-mixed" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast(self.device.type, enabled=False)


def _evaluation_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype:
    """The run's ``callbacks.eval_precision.dtype`` rule on this machine (float32 for a run without the callback)."""
    from lightning_modules.scale.precision import evaluation_dtype  # torch only, as the callback applies it

    setting = OmegaConf.select(cfg, "callbacks.eval_precision.dtype", default="float32")
    return evaluation_dtype(str(setting), device, str(cfg.trainer.get("precision")))


def run_task(run_dir: str | Path) -> TaskSpec:
    """The task a finished run classifies (from its config.yaml), without building its model, nor composing today's
    config: the task section is the run's own (``upgrade_saved_config`` fills only the stage and data sections)."""
    cfg, _ = _saved_config(Path(run_dir))
    follow_moved_modules(cfg.task)
    return instantiate_with(cfg.task)


def run_config(run_dir: str | Path) -> tuple[DictConfig, RunFolder]:
    """The run's resolved config.yaml and its results.json (both written by train.py when the run ended)."""
    run_dir = Path(run_dir)
    cfg, folder = _saved_config(run_dir)
    if folder.results.stage:  # a run of an older version may lack keys added since
        cfg = upgrade_saved_config(cfg, folder.results.stage)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg, folder


def _saved_config(run_dir: Path) -> tuple[DictConfig, RunFolder]:
    """The run's config.yaml as saved, and its folder; a ConfigError when it is not a finished run."""
    folder = RunFolder(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    if not folder.results_file.is_file() or not folder.config_path.is_file():
        raise ConfigError(f"{run_dir}: not a finished train.py run ({CONFIG_FILE} and {RESULTS_FILE} are written "
                          "when a run ends)")
    return OmegaConf.load(folder.config_path), folder


def selected_weights(folder: RunFolder) -> str | None:
    """The checkpoint the run selected on dev, inside the run folder (wherever the folder was copied or moved);
    else its export folder; None for a zero-shot run. MissingCheckpoint when the run kept none."""
    run_dir, results = folder.path, folder.results
    if folder.checkpoint_path is not None:
        if not folder.checkpoint_path.exists():
            raise MissingCheckpoint(f"{run_dir}: its selected checkpoint {folder.checkpoint_path} is not there "
                                    "(deleted?); give --checkpoint FILE or an export folder")
        return str(folder.checkpoint_path)
    if (run_dir / "export" / "config.json").is_file():
        return str(run_dir / "export")
    if results.zero_shot:
        return None
    raise MissingCheckpoint(f"{run_dir}: results.json names no checkpoint (the run had keep_checkpoints=false?); "
                      "give --checkpoint FILE or an export folder")


def _run_tokenizer(run_dir: Path, cfg: DictConfig, task: TaskSpec, backbone):
    """The tokenizer the run trained with: saved in the run (tokenizer/), else rebuilt from the run's data."""
    if RunFolder(run_dir).tokenizer_dir.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(RunFolder(run_dir).tokenizer_dir)
    datamodule = instantiate_with(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("predict")
    return backbone.tokenizer(vocabulary_texts(datamodule, task))


def _load_weights(module: StageModule, path: Path, named: str) -> None:
    """The weights of a Lightning checkpoint file, or of a DeepSpeed checkpoint folder (``strategy=zero*``: its shards
    gathered into full fp32 weights, as the run's own test and prediction loaded them), checked against the module."""
    check_checkpoint(str(path), named)
    try:
        if path.is_dir():
            from lightning_modules.scale.strategies import consolidated_checkpoint

            with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's notes; stdout holds predict.py's rows
                state = consolidated_checkpoint(path)["state_dict"]
        else:
            # mmap: the tensors are read from the file as they are copied into the module, and the optimizer state a
            # resumable checkpoint holds is never read at all
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    except Exception as err:  # noqa: BLE001 - a damaged archive fails in many ways (zip, pickle, tensor storage)
        raise ConfigError(f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                          "it may be damaged") from None
    own = module.state_dict()
    problems = []
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    reshaped = [key for key in own if key in state and own[key].shape != state[key].shape]
    if missing:
        problems.append(f"{len(missing)} weight(s) missing, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    if reshaped:
        key = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape, e.g. {key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}")
    if problems:
        raise ConfigError(f"checkpoint {path} does not fit the model of the run's config.yaml ({'; '.join(problems)})")
    bad = [key for key, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ConfigError(f"checkpoint {path}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); "
                          "it is damaged or the run diverged")
    module.load_state_dict(state)


def _check_export_covers(module: StageModule, folder: Path, named: str) -> None:
    """An export holds the masked LM only: a stage with weights of its own (finetune's head) needs a checkpoint."""
    own = sorted({name.split(".")[0] for name, _ in module.named_parameters() if not name.startswith("backbone.")})
    if own:
        raise ConfigError(f"{named}: an export folder holds the masked LM only, and stage "
                          f"{type(module).__name__} has weights of its own ({', '.join(own)}); give a .ckpt file")


def _device(name: str, cfg: DictConfig) -> torch.device:
    if name == "auto":
        from lightning_modules.scale.devices import on_gpu  # one rule with train.py's checks (torch only)

        return torch.device("cuda" if on_gpu(cfg.trainer.get("accelerator", "auto")) else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name}: {err}") from None
