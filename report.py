"""A sweep's results.json files as tables and a plot: per run for any sweep, the FewCLUE table for FewCLUE runs.

    python report.py SWEEP_DIR            # tables on stdout + SWEEP_DIR/report.{md,csv,png} and runs.csv
    python report.py SWEEP_DIR --zip      # also SWEEP_DIR/fewclue_submission.zip: the single board, one file per
                                          # task from its split-0 run (train_0/dev_0, as FewCLUE's README prescribes)
    python report.py SWEEP_DIR --board multi  # SWEEP_DIR/fewclue_multi_submission.zip: <task>_predict_<split>.json
                                              # for splits 0-4 and all (upstream's resources/fewclue_m_submit_examples/)
    python report.py SWEEP_DIR --wandb    # also the tables and plot as one W&B run in the sweep's group

Every sweep (FewCLUE or one's own files, ``data=files``) gets the runs table: per run its setting (the Hydra
overrides that differ between the sweep's runs, ``RunFolder.overrides``; paths and logging left out), ``val/acc``,
``heldout/acc`` and ``test/acc`` where present, and each label-word set's accuracy (``val/acc_<set>``,
``test/acc_<set>``, ``heldout/acc_<set>``); the run with the best ``val/acc`` is marked (the one predict.py takes
from the sweep folder). ``runs.csv`` holds it; for a sweep without FewCLUE runs it is also report.csv and the plot.

FewCLUE runs (the ones with a ``split``) are also grouped by setting: task, stage, verbalizer and the run's other
overrides (split, seed and paths are not part of a setting, every ``stage.*``, ``task.*`` or ``verbalizer.*``
override is). The zip refuses (exit 2) a prediction file that does not cover every row of test.json
(``data/predict_rows`` in results.json). Per setting: mean ± sample std of the accuracy over splits 0-4, the
few_all (``split=all``) score, and, per stage/verbalizer/variant, the FewCLUE score: the unweighted mean over tasks
of the split mean. Accuracy is ``test/acc`` (test_public.json) where every run of the table has it, else
``heldout/acc`` (labelled rows no run trained on or selected with), else ``val/acc`` (dev, which also chose the
checkpoint), and the table says which. Where a task was run with several label-word sets, the report adds the
accuracy per set and the spread (max - min of the split means) across sets.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


from datamodules.errors import ConfigError
from datamodules.tasks.task_configs import FEWCLUE_SPLITS
from datamodules.runs.results import RESULTS_FILE, RunFolder

SPLITS = FEWCLUE_SPLITS
# The multi board's six predictions per task: splits 0-4 and few_all.
MULTI_SPLITS = (*SPLITS, "all")
ZIPS = {"single": "fewclue_submission.zip", "multi": "fewclue_multi_submission.zip"}
# Overrides that identify a run inside a setting (exact keys: ``stage.aggregation`` *is* a setting, only the
# group choice ``stage`` is not), or only say where things are or go (prefixes; logger.wandb.*: the W&B run).
NOT_A_SETTING = {"task", "data.split", "seed", "data.data_dir", "keep_checkpoints", "stage", "verbalizer",
                 "trainer.limit_predict_batches", "logger", "ckpt_path"}
LOCATIONS = ("paths.", "hydra.", "logger.")


@dataclass
class Run:
    folder: RunFolder
    results: dict  # results.json's keys (datamodules/runs/results.py), its paths resolved in ``folder``
    variant: str  # the overrides that vary between runs and make a FewCLUE setting (not split or seed)
    setting: str = ""  # every override that varies between the runs (split and seed too), paths and logging left out

    @property
    def is_fewclue(self) -> bool:
        """A FewCLUE run (data=fewclue: it has a split); one's own files (data=files) have none."""
        return self.results.get("split") is not None

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def predictions(self) -> Path | None:
        """The run's own leaderboard file, in its folder (a copied sweep zips the copy's files)."""
        return self.folder.predictions_path

    @property
    def split(self) -> str:
        return str(self.results.get("split"))


@dataclass
class Setting:
    task: str
    stage: str
    verbalizer: str
    variant: str
    runs: list[Run] = field(default_factory=list)

    def scores(self, metric: str, splits=SPLITS) -> list[float]:
        return [r.results[metric] for r in self.runs if r.split in splits and r.results.get(metric) is not None]

    def mean_std(self, metric: str) -> tuple[float | None, float | None, int]:
        values = self.scores(metric)
        if not values:
            return None, None, 0
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)

    def few_all(self, metric: str) -> float | None:
        values = self.scores(metric, ("all",))
        return statistics.fmean(values) if values else None


def collect(sweep_dir: Path) -> list[Run]:
    """Every results.json below ``sweep_dir`` (in path order, as predict.py and the sweep summary read a sweep); a
    run's variant is the setting overrides that vary between runs, its setting every override that varies (not
    where things are)."""
    found = []
    for path in sorted(sweep_dir.rglob(RESULTS_FILE)):
        folder = RunFolder(path.parent)
        try:
            results = folder.results.to_dict()
        except ConfigError as err:
            raise SystemExit(f"error: {err}") from None
        overrides = {k: v for k, v in folder.overrides.items() if not k.startswith(LOCATIONS)}
        found.append((folder, results, overrides))
    variant_keys = _varying([_overrides_of(o) for _, _, o in found])
    setting_keys = _varying([o for _, _, o in found])
    return [Run(d, r, " ".join(f"{k}={o[k]}" for k in variant_keys if k in o),
                " ".join(f"{k}={o[k]}" for k in setting_keys if k in o)) for d, r, o in found]


def _overrides_of(overrides: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in overrides.items() if key not in NOT_A_SETTING}


def _varying(overrides: list[dict[str, str]]) -> list[str]:
    """The keys whose value is not the same in every run (a key some runs lack varies)."""
    keys = {k for o in overrides for k in o}
    return sorted(k for k in keys if len({o.get(k) for o in overrides}) > 1)


def _natural(path: Path) -> list:
    """Sort key: numbers as numbers (Hydra's job folders 0, 1, ..., 10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def group(runs: list[Run]) -> list[Setting]:
    settings: dict[tuple, Setting] = {}
    for run in runs:
        r = run.results
        key = (r.get("task"), r.get("stage"), r.get("verbalizer") or "-", run.variant)
        settings.setdefault(key, Setting(*key)).runs.append(run)
    return sorted(settings.values(), key=lambda s: (s.task, s.stage, s.verbalizer, s.variant))


# What the table reports, best first: a labelled test set, else the held-out rows (neither chose anything), else dev.
METRICS = {"test/acc": "test_public accuracy", "heldout/acc": "held-out accuracy",
           "val/acc": "dev accuracy (it also chose the checkpoint: optimistic)"}


def pick_metric(settings: list[Setting]) -> str:
    runs = [r for s in settings for r in s.runs]
    return next((metric for metric in METRICS if runs and all(r.results.get(metric) is not None for r in runs)),
                "val/acc")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def table_rows(settings: list[Setting], metric: str) -> list[dict]:
    rows = []
    for s in settings:
        mean, std, n = s.mean_std(metric)
        rows.append({
            "task": s.task, "stage": s.stage, "verbalizer": s.verbalizer, "variant": s.variant or "-",
            "splits": n, "mean": mean, "std": std, "few_all": s.few_all(metric),
        })
    return rows


def fewclue_scores(rows: list[dict]) -> list[dict]:
    """Per (stage, verbalizer, variant): the unweighted mean over tasks of the split means."""
    by_setting: dict[tuple, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row["mean"] is not None:
            by_setting[(row["stage"], row["verbalizer"], row["variant"])][row["task"]] = row["mean"]
    return [
        {"stage": k[0], "verbalizer": k[1], "variant": k[2], "tasks": len(v), "score": statistics.fmean(v.values())}
        for k, v in sorted(by_setting.items())
    ]


def verbalizer_spread(rows: list[dict]) -> list[dict]:
    """Per (task, stage, variant) run with several label-word sets: accuracy per set and max - min."""
    by_task: dict[tuple, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row["mean"] is not None and row["verbalizer"] != "-":
            by_task[(row["task"], row["stage"], row["variant"])][row["verbalizer"]] = row["mean"]
    out = []
    for (task, stage, variant), per_set in sorted(by_task.items()):
        if len(per_set) > 1:
            values = list(per_set.values())
            out.append({"task": task, "stage": stage, "variant": variant, "per_set": per_set,
                        "spread": max(values) - min(values), "std": statistics.pstdev(values)})
    return out


# The per-run table's accuracies, in this order; then each label-word set's (``PER_SET``), as results.json has them.
RUN_METRICS = ("val/acc", "heldout/acc", "test/acc")
PER_SET = re.compile(r"^(val|heldout|test)/acc_(.+)$")


def run_rows(runs: list[Run], sweep_dir: Path) -> list[dict]:
    """One row per run (job 2 before job 10): its folder (relative to the sweep), setting, accuracies (fractions, as
    results.json holds them; None where the run has none) and whether it is the sweep's best on dev (the run
    predict.py takes from the sweep folder: the first of equals in ``collect``'s order)."""
    best = best_dev(runs) if any(r.results.get("val/acc") is not None for r in runs) else None
    runs = sorted(runs, key=lambda r: _natural(r.path.relative_to(sweep_dir)))
    per_set = sorted({key for r in runs for key in r.results if PER_SET.match(key)},
                     key=lambda key: (RUN_METRICS.index(PER_SET.match(key).group(1) + "/acc"), key))
    shown = [m for m in RUN_METRICS if any(r.results.get(m) is not None for r in runs)] + per_set
    rows = []
    for run in runs:
        name = run.path.relative_to(sweep_dir).as_posix() if run.path != sweep_dir else "."
        row = {"run": name, "task": run.results.get("task"), "stage": run.results.get("stage"),
               "setting": run.setting or "-"}
        row.update({metric: run.results.get(metric) for metric in shown})
        row["best_on_dev"] = run is best
        rows.append(row)
    return rows


def run_metrics(rows: list[dict]) -> list[str]:
    return [key for key in rows[0] if key not in ("run", "task", "stage", "setting", "best_on_dev")] if rows else []


def runs_markdown(rows: list[dict]) -> str:
    metrics = run_metrics(rows)
    lines = ["Runs, accuracy (%): val/acc is dev, which also chose each run's checkpoint (optimistic); heldout/acc "
             "and test/acc score that checkpoint on rows it never saw.", "",
             "| run | task | stage | setting | " + " | ".join(metrics) + " |", "|---|---|---|---|" + "---|" * len(metrics)]
    for r in rows:
        mark = " (best on dev)" if r["best_on_dev"] else ""
        cells = [_fmt(r[m]) for m in metrics]
        lines.append(f"| {r['run']}{mark} | {r['task']} | {r['stage']} | {r['setting']} | " + " | ".join(cells) + " |")
    best = next((r for r in rows if r["best_on_dev"]), None)
    if best is not None:
        scores = ", ".join(f"{m} {_fmt(best[m])}" for m in RUN_METRICS if m in best and best[m] is not None)
        lines += ["", f"Best on dev: {best['run']} ({best['setting']}): {scores}."]
    return "\n".join(lines) + "\n"


def plot_runs(rows: list[dict], path: Path) -> None:
    """Per run, a bar for each of val/acc, heldout/acc and test/acc it has; the best-on-dev run's label is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in RUN_METRICS if m in run_metrics(rows)]
    labels = [("* " if r["best_on_dev"] else "") + r["run"] + (f"\n{r['setting']}" if r["setting"] != "-" else "")
              for r in rows]
    width = 0.8 / max(1, len(metrics))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) * max(1, len(metrics)) / 2 + 1.5), 4))
    colors = {"val/acc": "#4c72b0", "heldout/acc": "#55a868", "test/acc": "#dd8452"}
    for k, metric in enumerate(metrics):
        xs = [i + (k - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [100 * (r[metric] or 0.0) for r in rows], width, label=metric, color=colors[metric])
    ax.set_xticks(list(range(len(rows))), labels, fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("per run (* best on dev)", fontsize=9)
    if metrics:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], scores: list[dict], spreads: list[dict], metric: str) -> str:
    name = METRICS[metric]
    lines = [f"Accuracy (%): {name}, mean ± sample std over splits 0-4; few_all = split `all`.", "",
             "| task | stage | verbalizer | variant | splits | mean ± std | few_all |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cell = "-" if r["mean"] is None else f"{_fmt(r['mean'])} ± {_fmt(r['std'])}"
        lines.append(f"| {r['task']} | {r['stage']} | {r['verbalizer']} | {r['variant']} | {r['splits']} | {cell} | {_fmt(r['few_all'])} |")
    lines += ["", "FewCLUE score (unweighted mean over tasks of the split means):", "",
              "| stage | verbalizer | variant | tasks | score |", "|---|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s['verbalizer']} | {s['variant']} | {s['tasks']} | {_fmt(s['score'])} |" for s in scores]
    if spreads:
        lines += ["", "Label-word sets (split mean per set; spread = max - min):", "",
                  "| task | stage | variant | per set | spread | std over sets |", "|---|---|---|---|---|---|"]
        for s in spreads:
            per_set = ", ".join(f"{k} {_fmt(v)}" for k, v in s["per_set"].items())
            lines.append(f"| {s['task']} | {s['stage']} | {s['variant']} | {per_set} | {_fmt(s['spread'])} | {_fmt(s['std'])} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    if not rows:
        path.write_text("", encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["mean"] is not None]
    labels = [f"{r['task']}\n{r['verbalizer']}" + (f"\n{r['variant']}" if r["variant"] != "-" else "") for r in shown]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(shown) + 1), 4))
    x = range(len(shown))
    ax.bar(x, [100 * r["mean"] for r in shown], yerr=[100 * r["std"] for r in shown], capsize=4, color="#4c72b0")
    few = [(i, 100 * r["few_all"]) for i, r in enumerate(shown) if r["few_all"] is not None]
    if few:
        ax.scatter([i for i, _ in few], [v for _, v in few], color="#dd8452", zorder=3, label="few_all")
        ax.legend()
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel(f"{metric} (%), mean ± std over splits 0-4")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_dev(runs: list[Run]) -> Run:
    return max(runs, key=lambda r: r.results.get("val/acc") or 0.0)


def single_board(runs: list[Run]) -> dict[str, Run]:
    """FewCLUE's single board (README, 第一阶段 / 提交样例-单份): per task the run trained on train_0 and selected on
    dev_0, predicting test.json: the split-0 run; among several settings' split-0 runs, the best on dev."""
    by_task: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.split == "0":
            by_task[run.results["task"]].append(run)
    return {task: best_dev(candidates) for task, candidates in sorted(by_task.items())}


def multi_board(runs: list[Run]) -> dict[tuple[str, str], Run]:
    """FewCLUE's multi board (README, 第二阶段 / 提交样例-多份): per task one prediction of test.json per split
    0-4 and all. One setting per task makes all six: the one covering the most of them, then the best mean dev
    accuracy over them; for a split it ran more than once (seeds), its best dev run."""
    settings: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if run.split in MULTI_SPLITS:
            r = run.results
            settings[(r["task"], r.get("stage"), r.get("verbalizer") or "-", run.variant)].append(run)

    def rank(key: tuple) -> tuple:
        per_split = [best_dev([r for r in settings[key] if r.split == s]) for s in MULTI_SPLITS
                     if any(r.split == s for r in settings[key])]
        return len(per_split), statistics.fmean(r.results.get("val/acc") or 0.0 for r in per_split)

    chosen: dict[tuple[str, str], Run] = {}
    for task in sorted({key[0] for key in settings}):
        best = max((key for key in settings if key[0] == task), key=rank)
        for split in MULTI_SPLITS:
            candidates = [r for r in settings[best] if r.split == split]
            if candidates:
                chosen[(task, split)] = best_dev(candidates)
    return chosen


def submission_zip(runs: list[Run], path: Path, board: str = "single") -> list[str]:
    """The leaderboard zip of ``board``: single (one file per task, as in upstream's
    resources/fewclue_submit_examples/: ``eprstmt_predict.json``, ``chidf_predict.json``, ...) or multi (one per
    task and split, as in resources/fewclue_m_submit_examples/: ``eprstmt_predict_0.json`` ...
    ``chidf_predict_all.json``). Refuses (exit 2) a prediction file that misses rows of test.json."""
    with_files = [r for r in runs if r.predictions is not None and r.predictions.is_file()]
    if board == "single":
        files = {run.predictions.name: run for run in single_board(with_files).values()}
    else:
        files = {f"{run.predictions.stem}_{split}.json": run for (_, split), run in multi_board(with_files).items()}
    for name, run in files.items():
        expected = run.results.get("data/predict_rows")
        written = sum(1 for line in run.predictions.open(encoding="utf-8") if line.strip())
        if expected is not None and written != expected:
            print(f"error: task {run.results['task']}: {run.predictions} has {written} rows, test.json "
                  f"{expected} (was the run limited with trainer.limit_predict_batches?); no zip written", file=sys.stderr)
            sys.exit(2)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, run in sorted(files.items()):
            archive.write(run.predictions, arcname=name)
    return sorted(files)


def board_warnings(runs: list[Run], names: list[str], board: str) -> str:
    """What the zip lacks for a complete submission: tasks (9), and on the multi board splits per task (6)."""
    tasks = sorted({r.results.get("task") for r in runs})
    if board == "single":
        missing = [t for t in tasks if not any(r.results.get("task") == t and r.split == "0" and r.results.get("predictions")
                                               for r in runs)]
        text = "".join(f"warning: task {t} has no split-0 run with a prediction file; it is not in the zip\n" for t in missing)
        return text + ("warning: a FewCLUE submission needs the 9 task files\n" if len(names) < 9 else "")
    per_task = defaultdict(set)
    for name in names:
        stem, _, split = name.removesuffix(".json").rpartition("_")
        per_task[stem].add(split)
    text = "".join(f"warning: {stem}: no prediction for split(s) {', '.join(s for s in MULTI_SPLITS if s not in got)}\n"
                   for stem, got in sorted(per_task.items()) if len(got) < len(MULTI_SPLITS))
    return text + ("warning: a FewCLUE multi-board submission needs 9 tasks x 6 files\n" if len(names) < 54 else "")


def log_to_wandb(sweep_dir: Path, runs: list[Run], rows: list[dict], per_run: list[dict], scores: list[dict],
                 spreads: list[dict], metric: str) -> Path:
    """One W&B run (job type ``report``) in the group of the sweep's runs (``wandb/group`` in their results.json;
    the sweep directory when they were not logged to W&B), holding report.csv's table, the runs table, the FewCLUE
    scores and the per-set spread (FewCLUE runs), the plot, and the best-on-dev run in its summary. Offline unless
    ``WANDB_MODE=online``; returns the run's directory."""
    import wandb

    groups = sorted({str(r.results["wandb/group"]) for r in runs if r.results.get("wandb/group")})
    projects = sorted({str(r.results["wandb/project"]) for r in runs if r.results.get("wandb/project")})
    if len(groups) > 1:
        print(f"warning: the runs were logged in {len(groups)} W&B groups {groups}; the report goes to {sweep_dir}",
              file=sys.stderr)
    group = groups[0] if len(groups) == 1 else str(sweep_dir)
    run = wandb.init(project=projects[0] if len(projects) == 1 else "fewclue", group=group, job_type="report",
                     name=f"report-{sweep_dir.resolve().name}", dir=str(sweep_dir),
                     mode=os.environ.get("WANDB_MODE") or "offline", config={"sweep_dir": str(sweep_dir), "metric": metric})
    try:
        def table(items: list[dict]):
            columns = list(items[0])
            return wandb.Table(columns=columns, data=[[_plain(item[c]) for c in columns] for item in items])

        panels = {"report/table": table(rows), "report/runs": table(per_run),
                  "report/plot": wandb.Image(str(sweep_dir / "report.png"))}
        best = next((r for r in per_run if r["best_on_dev"]), None)
        if best is not None:
            run.summary.update({"best_on_dev/run": best["run"], "best_on_dev/setting": best["setting"],
                                **{f"best_on_dev/{m}": best[m] for m in RUN_METRICS if best.get(m) is not None}})
        if scores:
            panels["report/fewclue_score"] = table(scores)
        if spreads:
            panels["report/label_word_sets"] = table(spreads)
        run.log(panels)
    finally:
        run.finish()
    return Path(run.dir).parent


def _plain(value):
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


def report(sweep_dir: Path, make_zip: bool = False, to_wandb: bool = False, board: str = "single") -> str:
    runs = collect(sweep_dir)
    if not runs:
        raise SystemExit(f"error: no results.json under {sweep_dir}")
    per_run = run_rows(runs, sweep_dir)
    fewclue = [run for run in runs if run.is_fewclue]
    rows, scores, spreads, metric = [], [], [], "val/acc"
    if fewclue:
        settings = group(fewclue)
        metric = pick_metric(settings)
        rows = table_rows(settings, metric)
        scores, spreads = fewclue_scores(rows), verbalizer_spread(rows)
        text = markdown(rows, scores, spreads, metric) + "\n" + runs_markdown(per_run)
        plot(rows, sweep_dir / "report.png", metric)
    else:
        text = runs_markdown(per_run)
        plot_runs(per_run, sweep_dir / "report.png")
    (sweep_dir / "report.md").write_text(text, encoding="utf-8")
    write_csv(rows if fewclue else per_run, sweep_dir / "report.csv")
    write_csv(per_run, sweep_dir / "runs.csv")
    if to_wandb:
        text += f"\nW&B: {log_to_wandb(sweep_dir, runs, rows or per_run, per_run, scores, spreads, metric)}\n"
    if make_zip:
        names = submission_zip(runs, sweep_dir / ZIPS[board], board)
        text += f"\n{ZIPS[board]} ({board} board): {len(names)} file(s): {', '.join(names)}\n"
        text += board_warnings(runs, names, board)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a directory holding results.json files (a multirun sweep)")
    parser.add_argument("--zip", action="store_true",
                        help="zip the single-board submission: per task the split-0 run's test.json predictions")
    parser.add_argument("--board", choices=sorted(ZIPS),
                        help="zip this board's submission: single (as --zip) or multi (per task splits 0-4 and all)")
    parser.add_argument("--wandb", action="store_true",
                        help="log the tables and plot as one W&B run in the sweep's group (offline unless WANDB_MODE=online)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"error: {args.sweep_dir} is not a directory")
    board = args.board or "single"
    print(report(args.sweep_dir, args.zip or args.board is not None, args.wandb, board), end="")
    print(f"written: {args.sweep_dir / 'report.md'}, report.csv, runs.csv, report.png", file=sys.stderr)


if __name__ == "__main__":
    main()
