"""The results ledger: one JSON line per benchmark run (method, task, split, held-out and dev accuracy, seconds,
commit, machine, date, overrides), kept in the repository (``benchmarks/results.jsonl``) so the results page's
tables can be rebuilt and extended with paired cells after the run folders are gone.

``scripts/record_runs.py`` adds finished train.py runs under a method's name; ``scripts/heldout_table.py`` reads a
method from the ledger as ``name=@method``. A method has one record per task and split: recording the same run
again, or a rerun, replaces it.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import yaml

from datamodules.errors import ConfigError
from datamodules.runs.results import RESULTS_FILE, RunFolder
from datamodules.runs.writing import replaced

LEDGER = Path(__file__).resolve().parents[2] / "benchmarks" / "results.jsonl"
KEY = ("method", "task", "split")
ACCURACIES = ("heldout/acc", "test/acc", "val/acc")
# An absolute path inside an override's value: after "=", "[" or ",", up to the next "," or "]".
ABSOLUTE_PATH = re.compile(r"(?<=[=\[,])/[^,\]]*")


def run_record(run_dir: str | Path, method: str, commit: str | None = None, machine: str | None = None,
               root: str | Path | None = None, last_epoch: bool = False) -> dict:
    """One finished run as a ledger line. ``commit`` and ``machine`` stand in where results.json lacks them; paths
    in the overrides are written relative to ``root`` (the folder the runs were recorded from), never absolute.
    ``last_epoch``: the held-out and dev accuracy of the run's final evaluation in training (its ``heldout_curve``
    and ``dev_curve``, callbacks/heldout_curve.py), what ``selection=last`` tests, whatever checkpoint the run
    selected; the record says ``"selection": "last"``. Otherwise the record names the run's own ``selection``
    (runs written before results.json held it have none)."""
    run_dir = Path(run_dir)
    results = RunFolder(run_dir).results
    commit = results.commit or commit
    machine = results.machine or machine
    if not commit or not machine:
        missing = " and ".join(name for name, value in (("commit", commit), ("machine", machine)) if not value)
        raise ConfigError(f"{run_dir / RESULTS_FILE}: no {missing} recorded; give it (--{missing.split()[0]})")
    values = results.to_dict()
    if last_epoch:
        values = {**values, **final_evaluation(values, run_dir)}
    record: dict[str, Any] = {"method": method, "task": results.task, "split": results.split,
                              "stage": results.stage}
    selection = "last" if last_epoch else values.get("selection")
    if selection:
        record["selection"] = selection
    record.update({key: None if values.get(key) is None else round(float(values[key]), 6) for key in ACCURACIES})
    record["heldout_rows"] = values.get("data/heldout_rows")
    record["seconds"] = round(sum(results.timing.values()), 1) if results.timing else None
    record["global_step"] = results.global_step
    record["commit"], record["machine"] = commit, machine
    finished = datetime.datetime.fromtimestamp((run_dir / RESULTS_FILE).stat().st_mtime, datetime.timezone.utc)
    record["date"] = finished.date().isoformat()
    record["overrides"] = run_overrides(run_dir, Path(root) if root else run_dir)
    return record


def final_evaluation(values: dict, run_dir: Path) -> dict:
    """The accuracies of the last evaluation in training, from the run's dev and held-out curves."""
    dev, heldout = values.get("dev_curve") or [], values.get("heldout_curve") or []
    if not heldout or not dev or dev[-1]["step"] != heldout[-1]["step"]:
        raise ConfigError(f"{run_dir / RESULTS_FILE}: no held-out curve ending where the dev curve ends (run it with "
                          "+callbacks.heldout_curve._target_=callbacks.heldout_curve.HeldoutCurve)")
    return {"heldout/acc": heldout[-1]["heldout/acc"], "val/acc": dev[-1]["val/acc"], "test/acc": None}


def run_overrides(run_dir: Path, root: Path) -> list[str]:
    """The command line's overrides (Hydra's ``.hydra/overrides.yaml``) without the ``hydra.*`` ones, each absolute
    path in them relative to ``root`` (a path outside it keeps only its last part, ``.../name``)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    overrides = [str(item) for item in yaml.safe_load(path.read_text(encoding="utf-8")) or []
                 if not str(item).lstrip("+~").startswith("hydra.")]
    return [ABSOLUTE_PATH.sub(lambda found: _portable(found.group(0), root.resolve()), item) for item in overrides]


def _portable(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix() or "."
    except ValueError:
        return f".../{Path(path).name}"


def read(ledger: str | Path = LEDGER) -> list[dict]:
    ledger = Path(ledger)
    if not ledger.is_file():
        return []
    records = []
    for number, line in enumerate(ledger.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{ledger}, line {number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict) or any(key not in record for key in KEY):
            raise ConfigError(f"{ledger}, line {number}: a record needs {', '.join(KEY)}")
        records.append(record)
    return records


def _key(record: dict) -> tuple[str, ...]:
    return tuple(str(record[k]) for k in KEY)


def merged(records: list[dict], new: list[dict]) -> list[dict]:
    """``records`` with ``new`` added; a new record replaces the one with its method, task and split. Sorted."""
    by_key = {_key(r): r for r in records}
    by_key.update({_key(r): r for r in new})
    return [by_key[key] for key in sorted(by_key)]


def add(new: list[dict], ledger: str | Path = LEDGER) -> list[dict]:
    """Write ``new`` into the ledger; returns the earlier records they replaced."""
    old = read(ledger)
    keys = {_key(r) for r in new}
    write(merged(old, new), ledger)
    return [r for r in old if _key(r) in keys]


def write(records: list[dict], ledger: str | Path = LEDGER) -> None:
    ledger = Path(ledger)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with replaced(ledger) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def method_records(method: str, ledger: str | Path = LEDGER) -> list[dict]:
    """The ledger's records of ``method``; an unknown method is an error that names the recorded ones."""
    records = read(ledger)
    found = [r for r in records if r["method"] == method]
    if not found:
        known = sorted({r["method"] for r in records})
        raise ConfigError(f"{ledger}: no runs recorded as {method!r}; recorded: {known}")
    return found
