"""Predict with a trained run: ``python predict.py RUN_DIR --input FILE [--output FILE]``.

Rebuilds the run's model from its resolved ``config.yaml`` (the same config groups train.py
instantiates), loads the checkpoint that run selected on dev (results.json ``checkpoint``, inside the run folder), or a
``--checkpoint`` file, or an export folder, and writes one JSON line per input row, in input order:
the row's id (when the row has one), ``label`` (the official label), ``label_name`` and ``probs``
(class -> probability, summing to 1, from the stage's ``class_log_probs``).

    python predict.py outputs/2026-01-01/12-00-00-000000 --input test.json --output preds.jsonl
    cat rows.csv | python predict.py RUN_DIR --input - --format csv
    python predict.py RUN_DIR --text "物流很快，包装完好。"

Inputs: ``.json``/``.jsonl`` (JSON lines), ``.csv``, ``.tsv`` (header row), with the task's text fields;
labels in the input are ignored. Rows go in the run's evaluation batches (``data.eval_batch_size``, longest
first), so test.json gets exactly the labels of the run's leaderboard file. A bad row stops with one line
naming file:line:field and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import AutoTokenizer

from datamodules.epoch_shuffle import LengthOrder
from datamodules.tasks.fewclue import TaskRowsDataModule
from datamodules.tasks.rows import FORMATS, Row, read_rows
from datamodules.tasks.task_spec import TaskSpec
from datamodules.errors import ConfigError, DataError
from lightning_modules.stages.base import StageModule
from datamodules.runs.results import CONFIG_FILE, RESULTS_FILE, RunFolder
from datamodules.runs.saved_config import with_todays_defaults
from train import check_checkpoint, instantiate_with, vocabulary_texts

ROOT = Path(__file__).resolve().parent


class Predictor:
    """A run's stage module with its selected weights, in eval mode, and the task it classifies."""

    def __init__(self, cfg: DictConfig, task: TaskSpec, module: StageModule, device: torch.device, source: str) -> None:
        self.cfg = cfg
        self.task = task
        self.module = module
        self.device = device
        self.source = source  # where the weights came from

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str | None = None, device: str = "auto") -> Predictor:
        run_dir = Path(run_dir)
        cfg, folder = _run_files(run_dir)
        task = instantiate_with(cfg.task)
        if task.kind != "multiple_choice" and not task.labels:
            raise ConfigError(f"{run_dir}: task {task.name} has no labels to predict")
        source = checkpoint or _selected_checkpoint(folder)
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
        torch.manual_seed(int(cfg.seed))  # a zero-shot run's untrained parts are drawn as train.py drew them
        module: StageModule = instantiate_with(cfg.stage, masked_lm=backbone.masked_lm(tokenizer), tokenizer=tokenizer)
        if export:
            _check_export_covers(module, Path(source))
        elif source is not None:
            _load_weights(module, Path(source))
        module.eval()
        target = _device(device, cfg)
        module.to(target)
        return cls(cfg, task, module, target, str(source) if source else "the untrained model (zero-shot run)")

    def predict(self, rows: list[Row], batch_size: int | None = None, progress: TextIO | None = sys.stderr):
        """One output record per row, in the rows' order. Batches are the run's evaluation batches (LengthOrder)."""
        size = batch_size or int(self.cfg.data.eval_batch_size)
        sampler = LengthOrder([TaskRowsDataModule.text_length(row) for row in rows])
        loader = DataLoader(rows, batch_size=size, sampler=sampler, collate_fn=self.module.collate)
        order = iter(list(sampler))
        records: list[dict | None] = [None] * len(rows)
        bar = tqdm(loader, desc="predict", unit="batch", file=progress, disable=progress is None or len(loader) <= 1)
        with torch.no_grad(), self._autocast():
            for batch in bar:
                try:
                    log_probs = self.module.class_log_probs(move_data_to_device(batch, self.device)).float()
                except NotImplementedError as err:
                    raise ConfigError(f"stage {type(self.module).__name__} does not classify rows ({err})") from None
                probs = torch.softmax(log_probs.double(), dim=-1).cpu()
                for row_probs, choice in zip(probs, log_probs.argmax(-1).tolist()):
                    i = next(order)
                    records[i] = self.record(rows[i], choice, row_probs.tolist())
        return records

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


def _run_files(run_dir: Path) -> tuple[DictConfig, RunFolder]:
    """The run's resolved config.yaml and its results.json (both written by train.py when the run ended)."""
    folder = RunFolder(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    if not folder.results_file.is_file() or not folder.config_path.is_file():
        raise ConfigError(f"{run_dir}: not a finished train.py run ({CONFIG_FILE} and {RESULTS_FILE} are written "
                          "when a run ends)")
    cfg = OmegaConf.load(folder.config_path)
    if folder.results.stage:  # a run of an older version may lack keys added since
        cfg = with_todays_defaults(cfg, folder.results.stage)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg, folder


def _selected_checkpoint(folder: RunFolder) -> str | None:
    """The checkpoint the run selected on dev, inside the run folder (wherever the folder was copied or moved);
    else its export folder; None for a zero-shot run."""
    run_dir, results = folder.path, folder.results
    if folder.checkpoint_path is not None:
        return str(folder.checkpoint_path)
    if (run_dir / "export" / "config.json").is_file():
        return str(run_dir / "export")
    if results.zero_shot:
        return None
    raise ConfigError(f"{run_dir}: results.json names no checkpoint (the run had keep_checkpoints=false?); "
                      "give --checkpoint FILE or an export folder")


def _run_tokenizer(run_dir: Path, cfg: DictConfig, task: TaskSpec, backbone):
    """The tokenizer the run trained with: saved in the run (tokenizer/), else rebuilt from the run's data."""
    if RunFolder(run_dir).tokenizer_dir.is_dir():
        return AutoTokenizer.from_pretrained(RunFolder(run_dir).tokenizer_dir)
    datamodule = instantiate_with(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("predict")
    return backbone.tokenizer(vocabulary_texts(datamodule, task))


def _load_weights(module: StageModule, path: Path) -> None:
    check_checkpoint(str(path))
    if path.is_dir():
        raise ConfigError(f"--checkpoint {path}: a DeepSpeed checkpoint folder; convert it to one file first "
                          "(lightning.pytorch.utilities.deepspeed.convert_zero_checkpoint_to_fp32_state_dict)")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
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
    module.load_state_dict(state)


def _check_export_covers(module: StageModule, folder: Path) -> None:
    """An export holds the masked LM only: a stage with weights of its own (finetune's head) needs a checkpoint."""
    own = sorted({name.split(".")[0] for name, _ in module.named_parameters() if not name.startswith("backbone.")})
    if own:
        raise ConfigError(f"--checkpoint {folder}: an export folder holds the masked LM only, and stage "
                          f"{type(module).__name__} has weights of its own ({', '.join(own)}); give a .ckpt file")


def _device(name: str, cfg: DictConfig) -> torch.device:
    if name == "auto":
        on_gpu = torch.cuda.is_available() and str(cfg.trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
        return torch.device("cuda" if on_gpu else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name}: {err}") from None


def read_input(task: TaskSpec, source: str | None, text: str | None, fmt: str | None) -> list[Row]:
    """Rows of --input (a file, or - for stdin) or of --text (one row of a single-text task); ids optional."""
    if text is not None:
        if task.kind != "classification" or len(task.text_fields) != 1:
            raise ConfigError(f"--text gives one text, and task {task.name} reads {task.text_fields} "
                              f"({task.kind}); give rows with --input")
        data = json.dumps({task.text_fields[0]: text}, ensure_ascii=False).encode("utf-8")
        return read_rows(task, "--text", labelled=False, line_ids=True, data=data, fmt="jsonl")
    if source == "-":
        return read_rows(task, "<stdin>", labelled=False, allow_empty=True, line_ids=True,
                         data=sys.stdin.buffer.read(), fmt=fmt or "jsonl")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"--input {source}: no such file")
    return read_rows(task, path, labelled=False, allow_empty=True, line_ids=True, fmt=fmt)


def one_line(err: Exception) -> str:
    """A DataError listing several bad rows, as one line: the first row's message, then the other lines."""
    lines = [line.strip() for line in str(err).splitlines()]
    if len(lines) <= 2:
        return lines[-1]
    rest = [line.split(": ", 1)[0].rsplit(":", 1)[-1] for line in lines[2:]]
    return f"{lines[1]} (and {len(rest)} more bad row(s), line(s) {', '.join(rest)})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a train.py run directory (config.yaml, results.json, checkpoints/)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", help=f"rows to predict: a file ({', '.join(FORMATS)}) or - for stdin")
    what.add_argument("--text", help="one text (a task with one text field)")
    parser.add_argument("--format", choices=sorted(set(FORMATS.values())),
                        help="the input's format (default: by extension; jsonl for stdin)")
    parser.add_argument("--output", default="-", help="where the JSON lines go (default: stdout)")
    parser.add_argument("--checkpoint", help="a .ckpt file or an export folder instead of the run's selected checkpoint")
    parser.add_argument("--batch-size", type=int, help="rows per batch (default: the run's data.eval_batch_size)")
    parser.add_argument("--device", default="auto", help="auto (the run's accelerator if present), cpu, cuda, cuda:1, ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        print(f"error: --batch-size={args.batch_size}; allowed: an integer >= 1", file=sys.stderr)
        return 2
    try:
        predictor = Predictor.load(args.run_dir, args.checkpoint, args.device)
        rows = read_input(predictor.task, args.input, args.text, args.format)
        records = predictor.predict(rows, args.batch_size)
    except (ConfigError, DataError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    try:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"{len(records)} row(s) predicted with {predictor.source}"
          + (f" -> {args.output}" if args.output != "-" else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
