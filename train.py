"""Train one stage on one FewCLUE task: ``python train.py stage=finetune task=ocnli data.split=0``.

``build(cfg) -> BuiltRun``: datamodule (read and validated first), backbone, stage module, callbacks,
loggers, trainer, each instantiated from its config group;
``run(BuiltRun) -> results``: fit -> test (when test_public.json exists) -> predict test.json -> results.json.
"""

from __future__ import annotations

import logging
import difflib
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import hydra
import lightning as L
import psutil
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from callbacks import ipet
from callbacks.dev_curve import DevCurve
from callbacks.eval_precision import EvalPrecision
from callbacks.phase_times import PhaseTimes
from callbacks.selected_checkpoint import SelectedCheckpoint
from callbacks.leaderboard import LeaderboardWriter
from datamodules.protocol import StageData
from datamodules.tasks.task_spec import TaskSpec
from datamodules.teachers.ensemble import TeacherEnsemble
from datamodules.errors import ConfigError, DataError, Interrupted, NotWritable, TrainingDiverged, one_line
from lightning_modules.encoders.backbones import check_weight_files
from lightning_modules.scale.devices import on_gpu
from lightning_modules.scale.precision import resolved_precision
from lightning_modules.scale.training_length import apply_training_length
from lightning_modules.stages.base import StageModule
from datamodules.runs.saved_config import compose_train_config
from datamodules.runs import ownership
from datamodules.runs.writing import check_writable, disk_error, reason, replaced
from datamodules.runs.provenance import machine, source_commit
from datamodules.runs.results import CONFIG_FILE, RESULTS_FILE, TOKENIZER_DIR, RunResults
# Shared with predict.py and the distillation teachers (a finished run rebuilt from its config.yaml).
from datamodules.runs.build import check_checkpoint, instantiate_with, user_error, vocabulary_texts  # noqa: F401

log = logging.getLogger("train")
# Library lines that say nothing about the run: Lightning's advert, a deprecation inside Lightning, and the tokenizer's
# length warning for texts that the stages truncate afterwards.
NOISE = {"lightning.pytorch.utilities.rank_zero": "litlogger",
         "transformers.tokenization_utils_base": "Token indices sequence length is longer"}
for _name, _text in NOISE.items():
    logging.getLogger(_name).addFilter(lambda record, text=_text: text not in record.getMessage())
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
# Per-task settings of a stage, chosen on dev: conf/tuned/<task>_<stage>.yaml (conf/train.yaml, defaults).
TUNED_DIR = Path(__file__).resolve().parent / "conf" / "tuned"
# Seconds from the process's start to its first main() (imports, config composition), reported by the first run.
_startup: dict[str, Any] = {}


@dataclass
class BuiltRun:
    """What ``build`` makes of a config, everything ``run`` needs."""

    cfg: DictConfig
    task: TaskSpec
    datamodule: StageData
    backbone: Any
    module: StageModule
    callbacks: list
    loggers: list
    trainer: L.Trainer
    # Seconds spent building: data (reading and validating rows), model (backbone, tokenizer, stage), trainer.
    timing: dict[str, float]
    # The lock on the run folder (datamodules/runs/ownership.py), released when the run ends.
    folder_lock: Any = None


def check_config(cfg: DictConfig) -> None:
    """Stop before anything heavy is built when a value cannot work, naming the key and what is allowed."""
    precision = str(cfg.trainer.get("precision"))
    if precision in ("16-mixed", "16", "16-true") and not on_gpu(cfg.trainer.get("accelerator", "auto")):
        raise ConfigError(
            f"precision={precision} needs a CUDA GPU (fp16 autocast with loss scaling); this run is on CPU. "
            "Allowed here: precision=32-true or precision=bf16-mixed"
        )
    if not _integer(cfg.seed) or not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed={cfg.seed!r}; allowed: an integer from 0 to {2**32 - 1}")
    for key in ("batch_size", "eval_batch_size", "mlm_batch_size"):
        value = cfg.data.get(key)
        if value is not None and (not _integer(value) or value < 1):
            raise ConfigError(f"data.{key}={value!r}; allowed: an integer >= 1")
    workers = cfg.data.get("num_workers")
    if workers is not None and (not _integer(workers) or workers < 0):
        raise ConfigError(f"data.num_workers={workers!r}; allowed: an integer >= 0 (0: load in the main process)")
    unlabeled = cfg.data.get("max_unlabeled")
    if unlabeled is not None and (not _integer(unlabeled) or unlabeled < 1):
        raise ConfigError(f"data.max_unlabeled={unlabeled!r}; allowed: an integer >= 1, or null for every row")
    for key in ("max_length", "mlm_max_length"):
        value = cfg.stage.get(key)
        if value is not None and (not _integer(value) or value < MIN_LENGTH):
            raise ConfigError(f"stage.{key}={value!r}; allowed: an integer >= {MIN_LENGTH} (tokens per input)")
    check_trainer(cfg.trainer)
    check_data = getattr(get_class(cfg.data._target_), "check_settings", None) if "_target_" in cfg.data else None
    if check_data is not None:
        check_data(cfg.data)
    if (cfg.trainer.get("max_epochs") == 0 or cfg.trainer.get("max_steps") == 0) and not get_class(cfg.stage._target_).zero_shot:
        raise ConfigError(
            f"trainer.max_epochs=0 / max_steps=0 with stage={chosen_option('stage') or cfg.stage._target_} would "
            "evaluate and predict with untrained weights; allowed: >= 1 (zero-shot scoring: stage=fuzzy_pet)"
        )
    instantiate_with(cfg.stage.optim)  # lr, weight decay, warm-up and optimizer keys, before the model is built
    check_pretrained(cfg.model)
    if cfg.get("ckpt_path"):
        check_checkpoint(str(cfg.ckpt_path))
        check_resumable(str(cfg.ckpt_path))


# The fewest tokens an input may be cut to: [CLS], [SEP], a pattern's [MASK] slots and some text.
MIN_LENGTH = 8


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_resumable(ckpt: str) -> None:
    """A checkpoint file a fit can continue from: Lightning's full state (weights, optimizer, loops), not the
    weights alone (best.ckpt) nor another archive."""
    if Path(ckpt).is_dir():
        return  # a DeepSpeed checkpoint folder: DeepSpeed checks its own
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - an archive of another kind fails in many ways
        raise ConfigError(f"ckpt_path={ckpt}: not a Lightning checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ConfigError(f"ckpt_path={ckpt}: not a Lightning checkpoint (no state_dict)")
    if "optimizer_states" not in state or "loops" not in state:
        raise ConfigError(f"ckpt_path={ckpt}: the weights alone (the checkpoint the run tested), without the optimizer "
                          "and loop state a resume needs; resume from <run>/checkpoints/last.ckpt")


def check_trainer(trainer: DictConfig) -> None:
    """The Trainer values that would fail inside Lightning with a traceback, named with what is allowed."""
    for key in ("max_epochs", "max_steps"):
        value = trainer.get(key)
        if value is not None and (not _integer(value) or value < -1):
            raise ConfigError(f"trainer.{key}={value!r}; allowed: an integer >= 0, or -1 for no limit")
    accumulate = trainer.get("accumulate_grad_batches")
    if accumulate is not None and (not _integer(accumulate) or accumulate < 1):
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r}; allowed: an integer >= 1")
    devices = trainer.get("devices")
    if not (devices == "auto" or (_integer(devices) and (devices >= 1 or devices == -1)) or OmegaConf.is_list(devices)):
        raise ConfigError(f"trainer.devices={devices!r}; allowed: an integer >= 1, -1 (all), auto, or a list of ids")
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not on_gpu(accelerator):
        raise ConfigError(f"trainer.accelerator={accelerator}: no CUDA GPU on this machine; allowed here: cpu or auto")


NO_ENCODER_HINT = ("point model.pretrained (or ZH_MLM_SMALL) at a Chinese masked LM (a local folder or a hub name), "
                   "or train a small model from scratch with model=tiny")


def check_pretrained(model: DictConfig) -> None:
    if "pretrained" not in model:
        return
    if OmegaConf.is_missing(model, "pretrained") or not model.pretrained:
        raise ConfigError(f"model.pretrained is required with model=hf; {NO_ENCODER_HINT}")
    name = str(model.pretrained)
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.pretrained={name}: no Hugging Face checkpoint there (no folder with config.json); "
                              f"{NO_ENCODER_HINT}")
        check_weight_files(path, "model.pretrained")  # a cut or damaged file, before the data and the model
        return
    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise ConfigError(f"model.pretrained={name!r} is neither a local folder nor a valid hub name ({err})") from None


def resume_in_place(cfg: DictConfig) -> None:
    """``ckpt_path=<run>/checkpoints/last.ckpt`` continues that run in its own directory, so that its best
    checkpoint (selected on dev so far), results and predictions stay together and the outcome is the
    uninterrupted run's."""
    ckpt = cfg.get("ckpt_path")
    if ckpt and Path(ckpt).parent.name == "checkpoints":
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(ckpt).resolve().parent.parent)
        log.info("resuming the run in %s", cfg.paths.output_dir)


# Settings a resume may change: where things go and what is logged, and how long the run goes on (Lightning
# continues to a larger max_epochs); any other setting is restored from the checkpoint or breaks it.
CHANGEABLE_ON_RESUME = ("ckpt_path", "paths.", "overwrite", "allow_resume_changes", "logger", "keep_checkpoints",
                        "trainer.max_epochs", "trainer.min_steps", "trainer.max_steps", "trainer.limit_predict_batches",
                        "trainer.limit_test_batches", "callbacks.progress_bar.")
# Keys that say where things are (caches, data, outputs): a resume started from another directory may move them.
LOCATION_KEYS = ("cache_dir", "data_dir", "dirpath", "save_dir", "default_root_dir", "output_dir", "ids_file")


def check_resume(cfg: DictConfig) -> None:
    """A resume with settings the run's saved config.yaml does not have would silently keep the old ones (the
    optimizer's state holds the old learning rate) or fail midway: refuse, naming each key, unless
    allow_resume_changes=true."""
    saved_file = Path(cfg.paths.output_dir) / CONFIG_FILE
    if not cfg.get("ckpt_path") or not saved_file.is_file() or cfg.get("allow_resume_changes"):
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_file), resolve=False)
    now = OmegaConf.to_container(cfg, resolve=True)
    changed = [(key, old, new) for key, old, new in differences(saved, now)
               if not key.startswith(CHANGEABLE_ON_RESUME) and key.rsplit(".", 1)[-1] not in LOCATION_KEYS]
    if changed:
        shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: resuming with other settings than the run's {saved_file}: "
                          f"{shown}{more}; resume with the run's own settings, or allow_resume_changes=true to go on "
                          "with the checkpoint's state anyway")


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every leaf that differs, is missing or was added."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [item for key in sorted({*old, *new}, key=str)
                for item in differences(old.get(key, "<unset>"), new.get(key, "<unset>"), f"{prefix}{key}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Every entry of a dict-of-configs group (callbacks, logger) that has a ``_target_``."""
    if not group:
        return []
    return [instantiate_with(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def derive_teachers(cfg: DictConfig) -> None:
    """stage=distill's ``stage.teachers``: the ensemble of ``distill.teachers``, ``distill.weighting`` and
    ``distill.temperature``. Those user-facing keys are its settings' one place (iPET reads them too); built here
    rather than written in conf/stage/distill.yaml, stage.teachers cannot be overridden apart from them."""
    if "distill" not in cfg:
        return
    with open_dict(cfg):
        cfg.stage.teachers = {"_target_": f"{TeacherEnsemble.__module__}.{TeacherEnsemble.__name__}",
                              **{key: f"${{distill.{key}}}" for key in ("teachers", "weighting", "temperature")}}


def build(cfg: DictConfig, extra_callbacks: list | tuple = ()) -> BuiltRun:
    """Everything a run needs, data first: bad data stops the run before a model is built."""
    derive_teachers(cfg)
    with open_dict(cfg):  # config.yaml and the resume check see the precision the run trains with
        cfg.trainer.precision = resolved_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator", "auto"))
    check_config(cfg)
    if tuned := tuned_file():
        log.info("per-task settings from %s (chosen on dev; ~tuned leaves them out)", tuned)
    resume_in_place(cfg)
    check_resume(cfg)
    in_place = cfg.get("ckpt_path") and Path(cfg.ckpt_path).parent.name == "checkpoints"
    check_writable(cfg.paths.output_dir,
                   "ckpt_path=<a copy of the run>/checkpoints/last.ckpt" if in_place else "hydra.run.dir")
    lock = ownership.claim(cfg.paths.output_dir, resuming=bool(cfg.get("ckpt_path")), overwrite=bool(cfg.get("overwrite")))
    try:
        built = _build(cfg, extra_callbacks, lock)
        read_unlabeled_first(built)
        return built
    except BaseException:
        ownership.release(lock)
        raise


def _build(cfg: DictConfig, extra_callbacks: list | tuple, lock: Any) -> BuiltRun:
    L.seed_everything(cfg.seed, workers=True)
    started = time.perf_counter()
    task = instantiate_with(cfg.task)
    datamodule: StageData = instantiate_with(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    apply_training_length(cfg, datamodule)
    timing = {"data": time.perf_counter() - started}

    started = time.perf_counter()
    backbone = instantiate_with(cfg.model)
    tokenizer = backbone.tokenizer(vocabulary_texts(datamodule, task))
    module: StageModule = instantiate_with(cfg.stage, masked_lm=backbone.masked_lm(tokenizer), tokenizer=tokenizer)
    datamodule.connect(module.collate, module.collate_mlm if module.wants_mlm_batches else None)
    timing["model"] = time.perf_counter() - started

    started = time.perf_counter()
    callbacks = [*instantiate_all(cfg.get("callbacks")), *extra_callbacks]
    loggers = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate_with(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    timing["trainer"] = time.perf_counter() - started
    return BuiltRun(cfg, task, datamodule, backbone, module, callbacks, loggers, trainer, timing, lock)


def read_unlabeled_first(r: BuiltRun) -> None:
    """unlabeled.json read and validated now, before training, when any part of the run reads it (a part with
    ``reads_unlabeled``: the stage, self-training, a teacher's scoring): a bad row stops the run here, naming its file
    and line, not after training. Stages whose DataModule reads the rows in ``setup`` (entailment, mlm) need nothing."""
    readers = [type(part).__name__ for part in (r.module, *r.callbacks) if getattr(part, "reads_unlabeled", False)]
    if readers and hasattr(r.datamodule, "unlabeled_rows"):
        rows = r.datamodule.unlabeled_rows()
        log.info("%d unlabeled rows read for %s", len(rows), ", ".join(readers))


def run(r: BuiltRun, extra_results: dict | None = None) -> dict[str, Any]:
    """fit -> select on dev -> test -> predict -> results.json (rank zero writes; ``extra_results`` added)."""
    cfg, trainer, module, datamodule = r.cfg, r.trainer, r.module, r.datamodule
    failed = True
    try:
        with signals_reported(trainer):
            log_config(r.loggers, cfg)
            if trainer.is_global_zero:  # a resume compares its settings with these (check_resume)
                with replaced(Path(cfg.paths.output_dir) / CONFIG_FILE) as tmp:
                    OmegaConf.save(cfg, tmp, resolve=True)
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
            stop_if_terminated(trainer)
            best, val_acc = selected_checkpoint(trainer, module, datamodule)
            scores: dict[str, float] = {}
            if datamodule.evaluation_sets:  # test_public.json / data.test, and the held-out rows
                for per_loader in trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False):
                    scores.update(per_loader)
            test_acc, heldout_acc = scores.get("test/acc"), scores.get("heldout/acc")
            if datamodule.predict_rows:
                trainer.predict(module, datamodule=datamodule, ckpt_path=best, return_predictions=False)
        failed = False
    finally:
        close_loggers(r.loggers, failed)
        if failed:
            ownership.release(r.folder_lock)

    output_dir = Path(cfg.paths.output_dir)
    results = RunResults.from_dict({
        "stage": chosen_option("stage"),
        "task": r.task.name,
        "split": str(cfg.data.split) if "split" in cfg.data else None,  # data=files has no split
        "seed": int(cfg.seed),
        "model": chosen_option("model"),
        "pretrained": r.backbone.pretrained,
        "val/acc": val_acc,
        "test/acc": test_acc,
        "heldout/acc": heldout_acc,
        "test_set": datamodule.test_set if test_acc is not None else None,
        "predictions": prediction_file(r.callbacks),
        "checkpoint": best if cfg.keep_checkpoints else None,
        "config": str(output_dir / CONFIG_FILE),
        "global_step": trainer.global_step,
        # Evaluated and predicted without a training step (stage=fuzzy_pet trainer.max_epochs=0: the untrained cloze).
        "zero_shot": trainer.global_step == 0,
        "tuned": tuned_file(),
        "precision": str(trainer.precision),
        "eval_precision": next((cb.precision_name for cb in r.callbacks if isinstance(cb, EvalPrecision)), None),
        "timing": run_timing(r),
        "commit": source_commit(),
        "machine": machine(),
        **datamodule.stats,
        # the other metrics of the labelled evaluation sets: losses, each label-word set's accuracy (test/acc_v1)
        **{key: round(float(value), 6) for key, value in sorted(scores.items()) if key not in ("test/acc", "heldout/acc")},
        **module.results,
        **(extra_results or {}),
    }).to_dict()
    if trainer.is_global_zero:
        with replaced(output_dir / TOKENIZER_DIR) as tmp:  # predict.py rebuilds the model with it
            module.tokenizer.save_pretrained(tmp)
        # The one writer: every path stored relative to the run folder (datamodules/runs/results.py).
        RunResults.from_dict(results).write(output_dir)
        if best and not cfg.keep_checkpoints:
            shutil.rmtree(Path(best).parent, ignore_errors=True)
        heldout = f"heldout/acc: {_fmt(heldout_acc)} ({datamodule.stats.get('data/heldout_rows')} rows)  " if (
            heldout_acc is not None) else ""
        summary = (f"val/acc: {_fmt(val_acc)}  {heldout}"
                   f"test/acc: {_fmt(test_acc, 'n/a (no labelled test set: test_public.json, data.test)')}")
        log.info("%s -> %s", summary, output_dir / RESULTS_FILE)
        if results.get("selection") == "last" and results.get("dev_curve"):
            print(tested_last(results["dev_curve"], results["best_epoch"]))
        print(summary)
        for line in comparisons(r):
            print(line)
    ownership.release(r.folder_lock)
    return results


def tested_last(dev_curve: list[dict], epoch: int) -> str:
    """One line for a run that tests its last weights: which epoch that is, and the best dev evaluation it was not."""
    best = max(dev_curve, key=lambda point: point["val/acc"])
    return (f"selection=last: tested the weights training ended with (epoch {epoch}); the best dev "
            f"evaluation was epoch {best['epoch']} (val/acc {best['val/acc']:.4f})")


def run_timing(r: BuiltRun) -> dict[str, float]:
    """Seconds per phase: process start (the first run of a process), building, then what the Trainer did."""
    timing = {"start": _startup.pop("seconds")} if "seconds" in _startup else {}
    timing.update({phase: round(seconds, 2) for phase, seconds in r.timing.items()})
    for callback in r.callbacks:
        if isinstance(callback, PhaseTimes):
            timing.update(callback.report(r.trainer))
    return timing


def comparisons(r: BuiltRun) -> list[str]:
    """What the accuracies compare with: chance, the majority class's share of each labelled evaluation set (dev
    sets are often sampled balanced, so the held-out and test rows say more)."""
    sets = (("dev", "val_rows"), ("held-out", "heldout_rows"), ("test", "test_rows"))
    lines = []
    for name, attribute in sets:
        labels = [row.label for row in getattr(r.datamodule, attribute, None) or [] if row.label is not None]
        if labels:
            majority = max(labels.count(label) for label in set(labels)) / len(labels)
            lines.append(f"{name} {majority:.4f} ({len(labels)} rows)")
    return [f"chance (the majority class's share): {', '.join(lines)}"] if lines else []


def train(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("distill") and cfg.distill.get("generations"):
        # iPET: the generations train first; the distillation then learns from the last one.
        last = ipet.run_generations(cfg, lambda c, callbacks, extra: run(build(c, callbacks), extra))
        with open_dict(cfg):
            cfg.distill.teachers = last
    return run(build(cfg))


@contextmanager
def signals_reported(trainer: L.Trainer):
    """SIGTERM and SIGINT end the run as ``Interrupted``, naming where it stopped, what it wrote and how to go on, so
    that main() exits with 128 + the signal number. While the fit runs, SIGTERM stops it at the next step (Lightning's
    handler, which runs before this one, raises SIGTERMException there); at any other moment (testing, predicting,
    between them) either signal stops the run at once."""
    caught: list[int] = []

    def stop_now(signum, frame):
        if signum == signal.SIGTERM and fitting(trainer) and trainer.state.status == TrainerStatus.RUNNING:
            return
        caught.append(signum)
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if main_thread else ()
    previous = {signum: signal.signal(signum, stop_now) for signum in signals}
    try:
        yield
    except SIGTERMException:
        raise Interrupted(signal.SIGTERM, interruption(trainer, "SIGTERM")) from None
    except (KeyboardInterrupt, SystemExit):  # Lightning ends a KeyboardInterrupt inside its calls with sys.exit(1)
        if not caught:
            raise
        raise Interrupted(caught[0], interruption(trainer, signal.Signals(caught[0]).name)) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_if_terminated(trainer: L.Trainer) -> None:
    """A SIGTERM that reached Lightning after the fit's last step (it stops only at a step) ends the run here."""
    if trainer.received_sigterm:
        raise SIGTERMException


def fitting(trainer: L.Trainer) -> bool:
    """True until the fit has finished (also before it starts)."""
    return trainer.state.fn in (None, TrainerFn.FITTING) and trainer.state.status != TrainerStatus.FINISHED


# What the Trainer was doing when a signal came after the fit.
PHASES = {TrainerFn.TESTING: "while testing the selected checkpoint on the labelled sets",
          TrainerFn.PREDICTING: "while predicting the leaderboard file",
          TrainerFn.VALIDATING: "while measuring the final weights on dev",
          TrainerFn.FITTING: "between training and testing"}


def interruption(trainer: L.Trainer, name: str) -> str:
    """Where the run stopped, what it wrote and how to go on, in one line."""
    latest = [cb.best_model_path for cb in trainer.checkpoint_callbacks
              if cb.monitor is None and not isinstance(cb, SelectedCheckpoint) and cb.best_model_path]
    last = latest[0] if latest and Path(latest[0]).exists() else None
    if fitting(trainer):
        resume = f"resume with ckpt_path={last} (same overrides)" if last else "no checkpoint was written yet"
        return f"interrupted by {name} at step {trainer.global_step} (epoch {trainer.current_epoch}); {resume}"
    selected = next((cb for cb in trainer.checkpoint_callbacks
                     if (isinstance(cb, SelectedCheckpoint) or cb.monitor) and cb.best_model_path), None)
    how = "the last weights" if getattr(selected, "selection", None) == "last" else "selected on dev"
    written = f"{selected.best_model_path} ({how}) is written" if selected else "no checkpoint was selected on dev"
    again = (f"resume with ckpt_path={last} (same overrides) to test and predict again" if last else
             "no last.ckpt to resume from (callbacks.last_checkpoint.min_interval_s): run it again")
    return (f"interrupted by {name} {PHASES[trainer.state.fn]} (training ended at step {trainer.global_step}, epoch "
            f"{trainer.current_epoch}); {written}, results.json is not; {again}")


def selected_checkpoint(trainer: L.Trainer, module, datamodule) -> tuple[str | None, float | None]:
    """The selected checkpoint (``selection``: the best on dev, or the last weights) and its val/acc; without one,
    the final weights measured on dev."""
    selected = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, SelectedCheckpoint)]
    monitored = [cb for cb in trainer.checkpoint_callbacks if cb.monitor == "val/acc"]
    checkpoint = (selected or monitored or [trainer.checkpoint_callback])[0]
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    if best and checkpoint.monitor == "val/acc" and checkpoint.best_model_score is not None:
        return best, float(checkpoint.best_model_score)
    final = final_dev_accuracy(trainer)
    if best and final is not None and checkpoint._last_global_step_saved == trainer.global_step:
        return best, final  # the last weights, already measured by the dev evaluation that ended training
    # No validation ran before the end (e.g. max_steps hit mid-epoch): measure what training left.
    metrics = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    return best, metrics[0].get("val/acc") if metrics else None


def final_dev_accuracy(trainer: L.Trainer) -> float | None:
    """val/acc of the dev evaluation at the last training step, or None when training ended without one."""
    points = [cb.curve[-1] for cb in trainer.callbacks if isinstance(cb, DevCurve) and cb.monitor == "val/acc" and cb.curve]
    return float(points[0]["val/acc"]) if points and points[0]["step"] == trainer.global_step else None


def prediction_file(callbacks: list) -> str | None:
    writer = next((cb for cb in callbacks if isinstance(cb, LeaderboardWriter)), None)
    return str(writer.path) if writer is not None and writer.path else None


def log_config(loggers: list[Any], cfg: DictConfig) -> None:
    """The resolved config as a W&B run's config (beside the stage's own hyperparameters, which Lightning adds)."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))


def close_loggers(loggers: list[Any], failed: bool) -> None:
    """Finish W&B runs even when training failed, so none is left open."""
    for logger in loggers:
        try:
            logger.finalize("failed" if failed else "success")
        except Exception:  # noqa: BLE001 - closing must not hide the original error
            log.exception("could not finalize logger %s", type(logger).__name__)
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)


def chosen_option(group: str) -> str | None:
    """The option of config group ``group`` this run composed (``stage=fuzzy_pet``: fuzzy_pet); None outside
    Hydra's app."""
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def tuned_file() -> str | None:
    """conf/tuned/<task>_<stage>.yaml when the run composed one (train.yaml's `optional tuned`), else None."""
    name = chosen_option("tuned")
    path = TUNED_DIR / f"{name}.yaml" if name else None
    return str(path.relative_to(TUNED_DIR.parents[1])) if path and path.is_file() else None


def _fmt(value: float | None, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.4f}"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if not _startup:  # a multirun calls main() once per job
        _startup.update(measured=True, seconds=round(time.time() - psutil.Process().create_time(), 2))
    try:
        return train(cfg)["val/acc"]
    except (ConfigError, DataError, NotWritable) as err:
        stop(2, "error", one_line(err))
    except MissingMandatoryValue as err:
        stop(2, "error", missing_value(err))
    except OSError as err:
        if not disk_error(err):
            raise
        stop(2, "error", f"cannot write {err.filename or 'a file of the run'}: {reason(err)}")
    except TrainingDiverged as err:
        stop(3, "error", str(err))
    except Interrupted as err:
        stop(128 + err.signum, "stopped", str(err))


def stop(code: int, kind: str, message: str) -> NoReturn:
    """End the process with one line on stderr; inside a multirun the line names the job by its overrides."""
    print(f"{kind}: {sweep_job()}{message}", file=sys.stderr)
    sys.exit(code)


def missing_value(err: MissingMandatoryValue) -> str:
    return f"{err.full_key} is required (???); give {err.full_key}=<value>"


def sweep_job() -> str:
    """``job N (overrides): `` inside a multirun, '' in a single run."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    return job_label(HydraConfig.get().job.num, list(HydraConfig.get().overrides.task))


def job_label(number: int, overrides: list[str]) -> str:
    """A multirun's job as Hydra numbers it, by its overrides (Hydra's own settings left out, as Hydra does)."""
    return f"job {number} ({' '.join(o for o in overrides if not o.lstrip('+~').startswith(('hydra.', 'hydra/')))}): "


# Keys a user may type for settings that live under another key: the hint names it.
KEYS_LIVING_ELSEWHERE = {
    "stage.lr": "the learning rate and weight decay are stage.optim.lr / stage.optim.weight_decay",
    "stage.weight_decay": "the learning rate and weight decay are stage.optim.lr / stage.optim.weight_decay",
    "self_training.": "self-training's settings are callbacks.self_training.*",
    "stage.teachers": "the teachers' settings are distill.teachers / distill.weighting / distill.temperature",
}


# Keys of the own-files DataModule (conf/data/files.yaml): typed without data=files, they name it.
FILES_KEYS = ("data.train", "data.dev", "data.test", "data.predict", "data.unlabeled", "data.shots", "data.dev_shots",
              "data.sample_seed", "data.ids_file")


def one_line_composition_error(message: str, known_keys: list[str] = ()) -> str:
    """Hydra's composition message in one line: the key (and the allowed options) without the search path, and
    the fix where one is likely: the closest key of ``known_keys`` for a typo, data=files for an own-files key,
    hydra.searchpath for a task that is not in conf/task."""
    message = message.split("Config search path")[0]
    key = re.search(r"Could not override '([^']+)'", message)
    if key:
        name = key.group(1)
        hint = next((f"; {where}" for prefix, where in KEYS_LIVING_ELSEWHERE.items() if name.startswith(prefix)), "")
        if name in FILES_KEYS:
            return f"{name} is a key of data=files (a task's rows from your own files): add data=files"
        close = difflib.get_close_matches(name, [*known_keys, *FILES_KEYS], n=1, cutoff=0.8)
        if close:
            where = " (a key of data=files: add data=files)" if close[0] not in known_keys else ""
            return f"{name} is not a key of this configuration; did you mean {close[0]}{where}?{hint}"
        return f"{name} is not a key of this configuration (to add one anyway: +{name}=...){hint}"
    missing_task = re.search(r"Could not find 'task/([^']+)'", message)
    head, _, options = message.partition("Available options in")
    lines = [line.strip() for line in head.split("\n") if line.strip() and not line.strip().startswith(("full_key", "object_type"))]
    text = "; ".join(lines)
    if options:
        group, _, names = options.partition(":")
        text += f"; allowed in {group.strip()}: {', '.join(names.split())}"
    if missing_task:
        text += (f"; a task of your own: put {missing_task.group(1)}.yaml in <folder>/task/ and add "
                 f"hydra.searchpath=[file:///absolute/path/to/<folder>]")
    return text


def preflight(argv: list[str]) -> str | None:
    """What stops a run before Hydra starts it, as one line (None: nothing): overrides that do not compose (Hydra's
    multi-line message, on one line); in a multirun, every job's overrides composed and their values checked
    (``check_config``), so that no job runs when a later one cannot, the line naming the job; a run (or sweep) folder
    that cannot be written. Hydra's own flags (--cfg, --help, ...) and sweepers other than Hydra's basic one are left
    to Hydra."""
    flags = {arg for arg in argv if arg.startswith("-")}
    multirun = bool(flags) and flags <= {"-m", "--multirun"}
    overrides = [arg for arg in argv if not arg.startswith("-")]
    if (flags and not multirun) or any(arg.startswith(("hydra/sweeper=", "hydra.sweeper.")) for arg in overrides):
        return None
    from hydra.errors import HydraException

    try:
        jobs = sweep_jobs(overrides) if multirun else [overrides]
    except HydraException as err:
        return one_line_composition_error(str(err))
    folder = None
    for number, job in enumerate(jobs):
        where = job_label(number, job) if multirun else ""
        try:
            cfg = compose_train_config(job, hydra_config=True)
        except HydraException as err:
            return where + one_line_composition_error(str(err), composable_keys(job))
        folder = folder or str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
        if multirun:
            with open_dict(cfg):
                del cfg["hydra"]  # check_config sees what the job's main() sees
            try:
                check_config(cfg)
            except (ConfigError, DataError) as err:
                return where + one_line(err)
            except MissingMandatoryValue as err:
                return where + missing_value(err)
    try:
        check_writable(folder, "hydra.sweep.dir" if multirun else "hydra.run.dir", make=False)
    except NotWritable as err:
        return str(err)
    return None


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of each job of ``python train.py -m <overrides>``, in the order Hydra's basic sweeper numbers
    them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def composable_keys(argv: list[str]) -> list[str]:
    """Every dotted key of the config the overrides compose to without their key=value overrides (for a typo's
    closest key); [] when even that does not compose."""
    from hydra.errors import HydraException

    groups = [arg for arg in argv if "=" in arg and "." not in arg.split("=", 1)[0] and not arg.startswith("+")]
    try:
        cfg = compose_train_config(groups)
    except HydraException:
        return []
    keys: list[str] = []

    def walk(node, prefix: str) -> None:
        for key in node:
            path = f"{prefix}{key}"
            keys.append(path)
            if OmegaConf.is_dict(node._get_node(key)):
                walk(node._get_node(key), f"{path}.")

    walk(cfg, "")
    return keys


def searchpath_warnings(argv: list[str]) -> list[str]:
    """A hydra.searchpath entry that is not a folder is searched for nothing, silently; say so (the run would miss
    the user's task files)."""
    entries = [entry.strip().strip("'\"") for arg in argv if arg.startswith("hydra.searchpath=")
               for entry in arg.split("=", 1)[1].strip("[]").split(",")]
    folders = [(entry, entry.removeprefix("file://")) for entry in entries if entry and not entry.startswith("pkg://")]
    return [f"warning: hydra.searchpath entry {entry!r}: {Path(folder).resolve()} is not a folder; nothing is searched "
            "there (give an absolute path: hydra.searchpath=[file:///absolute/path])"
            for entry, folder in folders if not Path(folder).is_dir()]


if __name__ == "__main__":
    for warning in searchpath_warnings(sys.argv[1:]):
        print(warning, file=sys.stderr)
    problem = preflight(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
