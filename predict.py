"""Predict with a trained run: ``python predict.py RUN_DIR --input FILE [--output FILE]``.

Rebuilds the run's model from its resolved ``config.yaml`` (the same config groups train.py
instantiates; ``datamodules/runs/predictor.py``), loads the checkpoint that run selected on dev (results.json
``checkpoint``, inside the run folder), or a ``--checkpoint`` file, or an export folder, and writes one JSON line
per input row, in input order:
the row's id (when the row has one), ``label`` (the official label), ``label_name`` and ``probs``
(class -> probability, summing to 1, from the stage's ``class_log_probs``).

    python predict.py outputs/2026-01-01/12-00-00-000000 --input test.json --output preds.jsonl
    cat rows.csv | python predict.py RUN_DIR --input - --format csv
    python predict.py RUN_DIR --text "物流很快，包装完好。"

Inputs: ``.json``/``.jsonl`` (JSON lines), ``.csv``, ``.tsv`` (header row), with the task's text fields, or
``.txt`` / ``--format txt`` (one text per line for a task with one text field; ids are line numbers);
labels in the input are ignored. Probabilities are rounded to 4 digits. Rows go in the run's evaluation batches (``data.eval_batch_size``, longest
first), so test.json gets exactly the labels of the run's leaderboard file. A bad row stops with one line
naming file:line:field and exit code 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from datamodules.errors import ConfigError, DataError, NotWritable, one_line
from datamodules.tasks.rows import FORMATS, Row, read_rows
from datamodules.tasks.task_spec import TaskSpec

# torch, Lightning and transformers are imported with the model (datamodules/runs/predictor.py), after the
# arguments are read: --help and a bad argument answer at once.


def read_input(task: TaskSpec, source: str | None, text: str | None, fmt: str | None) -> list[Row]:
    """Rows of --input (a file, or - for stdin) or of --text (one row of a single-text task); ids optional."""
    if text is not None:
        if task.kind != "classification" or len(task.text_fields) != 1:
            raise ConfigError(f"--text gives one text, and task {task.name} reads {task.text_fields} "
                              f"({task.kind}); give rows with --input")
        data = json.dumps({task.text_fields[0]: text}, ensure_ascii=False).encode("utf-8")
        return read_rows(task, "--text", labelled=False, line_ids=True, data=data, fmt="jsonl")
    if source == "-":
        data = sys.stdin.buffer.read()
        if fmt == "txt":
            return plain_lines(task, "<stdin>", data)
        return read_rows(task, "<stdin>", labelled=False, allow_empty=True, line_ids=True, data=data, fmt=fmt or "jsonl")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"--input {source}: no such file")
    if fmt == "txt" or (fmt is None and path.suffix == ".txt"):
        return plain_lines(task, str(path), path.read_bytes())
    return read_rows(task, path, labelled=False, allow_empty=True, line_ids=True, fmt=fmt)


def plain_lines(task: TaskSpec, name: str, data: bytes) -> list[Row]:
    """One text per line (a task with one text field); a row's id is its line number, blank lines are skipped."""
    if task.kind != "classification" or len(task.text_fields) != 1:
        raise ConfigError(f"{name}: plain lines give one text per row, and task {task.name} reads {task.text_fields} "
                          f"({task.kind}); give JSON lines, csv or tsv")
    lines = data.decode("utf-8").splitlines()
    rows = "".join(json.dumps({"id": n, task.text_fields[0]: line}, ensure_ascii=False) + "\n" if line.strip() else "\n"
                   for n, line in enumerate(lines, start=1))
    return read_rows(task, name, labelled=False, allow_empty=True, data=rows.encode("utf-8"), fmt="jsonl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a train.py run directory (config.yaml, results.json, checkpoints/)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", help=f"rows to predict: a file ({', '.join(FORMATS)}) or - for stdin")
    what.add_argument("--text", help="one text (a task with one text field)")
    parser.add_argument("--format", choices=sorted({*FORMATS.values(), "txt"}),
                        help="the input's format (default: by extension, .txt: one text per line; jsonl for stdin)")
    parser.add_argument("--output", default="-", help="where the JSON lines go (default: stdout)")
    parser.add_argument("--checkpoint", help="a .ckpt file or an export folder instead of the run's selected checkpoint")
    parser.add_argument("--batch-size", type=int, help="rows per batch (default: the run's data.eval_batch_size)")
    parser.add_argument("--device", default="auto", help="auto (the run's accelerator if present), cpu, cuda, cuda:1, ...")
    return parser.parse_args(argv)


def chosen_run(path: Path) -> Path:
    """``path`` itself when it is a run folder; for a sweep folder, its run with the best dev accuracy (named)."""
    from datamodules.runs.results import RESULTS_FILE, RunFolder

    if RunFolder.is_run(path) or not path.is_dir():
        return path
    runs = [RunFolder(found.parent) for found in sorted(path.rglob(RESULTS_FILE))]
    if not runs:
        return path  # run_config names what is missing
    best = max(runs, key=lambda run: run.results.val_acc if run.results.val_acc is not None else -1.0)
    others = len(runs) - 1
    print(f"{path}: a sweep of {len(runs)} runs; predicting with its best on dev, {best.path} "
          f"(val/acc {best.results.val_acc:.4f}; {others} other run(s))", file=sys.stderr)
    return best.path


def check_output(output: str) -> None:
    """An --output file that can be written (its folder exists, it is not a folder), before any row is predicted."""
    if output == "-":
        return
    path = Path(output)
    if path.is_dir():
        raise ConfigError(f"--output {output} is a folder; give a file name")
    if not path.parent.is_dir():
        raise ConfigError(f"--output {output}: the folder {path.parent} does not exist")
    from datamodules.runs.writing import check_writable

    check_writable(path.parent, "--output")  # the file is written beside, then renamed onto it


def write_records(records: list[dict], output: str) -> None:
    """One JSON line per record, to stdout or to a file written whole (never half a file on a full disk)."""
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if output == "-":
        sys.stdout.write(lines)
        return
    from datamodules.runs.writing import replaced

    with replaced(output) as tmp:
        tmp.write_text(lines, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        print(f"error: --batch-size={args.batch_size}; allowed: an integer >= 1", file=sys.stderr)
        return 2
    from datamodules.runs.predictor import Predictor, run_task

    try:
        args.run_dir = chosen_run(Path(args.run_dir))
        # The input and the output path are checked before the model is built.
        rows = read_input(run_task(args.run_dir), args.input, args.text, args.format)
        check_output(args.output)
        predictor = Predictor.load(args.run_dir, args.checkpoint, args.device)
        records = predictor.predict(rows, args.batch_size)
        write_records(records, args.output)
    except (ConfigError, DataError, NotWritable) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"{len(records)} row(s) predicted with {predictor.source}"
          + (f" -> {args.output}" if args.output != "-" else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    code = main()
    # The interpreter's teardown would walk every object torch and transformers made (about half a second); frozen,
    # they are left to the OS. The output is written and closed by now; stdout and atexit handlers still flush.
    gc.freeze()
    sys.exit(code)
