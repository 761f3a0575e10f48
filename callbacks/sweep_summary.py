"""The end of a multirun: one line per job (the overrides that vary, dev, held-out and test accuracy), the job
chosen on dev, and the report command (a Hydra callback, ``conf/hydra/default.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from datamodules.runs.results import RESULTS_FILE, RunFolder

METRICS = ("val/acc", "heldout/acc", "test/acc")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print(summary(Path(config.hydra.sweep.dir)))


def summary(sweep: Path) -> str:
    folders = [RunFolder(path.parent) for path in sorted(sweep.rglob(RESULTS_FILE))]
    runs = [(folder.path, folder.results.to_dict(), folder.overrides) for folder in folders]
    if not runs:
        return f"sweep {sweep}: no job finished"
    keys = sorted({key for _, _, overrides in runs for key in overrides})
    varying = [key for key in keys if len({overrides.get(key) for _, _, overrides in runs}) > 1]
    shown = [metric for metric in METRICS if any(results.get(metric) is not None for _, results, _ in runs)]
    best = max(runs, key=lambda run: run[1].get("val/acc") or -1.0)
    lines = [f"sweep {sweep}: {len(runs)} job(s) finished", "",
             "| job | " + " | ".join([*varying, *shown]) + " |", "|---|" + "---|" * (len(varying) + len(shown))]
    for folder, results, overrides in runs:
        mark = " (best on dev)" if folder == best[0] else ""
        cells = [overrides.get(key, "") for key in varying]
        cells += ["-" if results.get(m) is None else f"{100 * results[m]:.1f}" for m in shown]
        lines.append(f"| {folder.relative_to(sweep)}{mark} | " + " | ".join(cells) + " |")
    lines += ["", f"best on dev: {best[0]} (val/acc {100 * (best[1].get('val/acc') or 0):.1f})",
              f"report: python report.py {sweep}"]
    return "\n".join(lines)
