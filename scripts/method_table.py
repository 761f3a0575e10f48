"""The methods side by side on FewCLUE dev, one resumable queue of single runs.

    python scripts/method_table.py run   --out outputs/method_table              # every missing cell, cheapest first
    python scripts/method_table.py run   --out ... --tasks eprstmt bustm --splits 0 1 --methods finetune fuzzy
    python scripts/method_table.py plan  --out ...                               # the commands still to run
    python scripts/method_table.py table --out ... [--write table.md]            # the markdown table from what exists

A cell is one (method, task, split) run in ``<out>/<method>/<task>/<split>``; a cell whose results.json exists is
skipped, so a stopped queue resumes where it stopped (on these 2-core machines the whole table takes many hours:
run it in the background, read the table whenever). Methods, all with the shared encoder ($ZH_MLM_SMALL):

- ``finetune``: ``experiment=finetune_zh_mlm_small`` (fewer epochs on the tasks with many training rows);
- ``pet_<set>``: ``experiment=fuzzy_pet_zh_mlm_small verbalizer=<set>`` for each label-word set of the task;
- ``fuzzy``: ``experiment=fuzzy_pet_zh_mlm_small`` (every set pooled); every method runs with ``~tuned`` (the stage's
  own defaults) except
- ``fuzzy_tuned``: ``fuzzy`` with ``conf/tuned/<task>_fuzzy_pet.yaml`` (what the default command runs; tasks with one);
- ``fuzzy_st``: ``fuzzy`` + ``callbacks.self_training.rounds=1`` (tasks with unlabeled.json);
- ``distill``: ``stage=distill`` with the cell's ``fuzzy`` and ``pet_*`` runs as teachers (tasks with unlabeled.json);
- ``fuzzy_mean``, ``fuzzy_cal``, ``fuzzy_cal_sets``, ``fuzzy_cal_init``: ``fuzzy`` with ``stage.word_score=mean``,
  ``calibrated``, ``calibrated`` + ``stage.pooling=sets``, and ``calibrated_initial`` (the scoring options whose
  defaults were chosen on dev; second table);
- ``fuzzy_longest``: ``fuzzy`` with ``stage.slots=longest`` (one copy of each row in the encoder pass instead of one per word length; tasks
  whose label words have several lengths only).

Each run's wall time is written beside its results.json (``wall_s.json``). The table gives dev accuracy, mean ± sample
std over the splits present, per task and method; PET best/worst = the set with the best/worst mean over the splits
(chosen on dev, as a user sweeping sets would); the FewCLUE score is the mean over tasks, given only when every task
has the method.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from datamodules.runs.results import RESULTS_FILE, RunFolder
from datamodules.tasks.task_configs import FEWCLUE_SPLITS, FEWCLUE_TASKS, load_task_specs
from datamodules.tasks.task_spec import TaskSpec

# Cheapest first.
TASKS, SPLITS = FEWCLUE_TASKS, FEWCLUE_SPLITS
# FewCLUE's tasks with unlabeled rows (cluewsc's unlabeled.json is empty; csl, ocnli, csldcp and iflytek have none).
WITH_UNLABELED = ("eprstmt", "bustm", "chid", "tnews")
# Fine-tuning epochs: the experiment's 20 on the 32-row tasks, fewer where a split has hundreds of rows.
FINETUNE_EPOCHS = {"chid": 10, "tnews": 10, "iflytek": 5, "csldcp": 5}
# Every run: no checkpoints kept, one prediction batch (the table reads dev accuracy), CSV logs only.
COMMON = ("keep_checkpoints=false", "trainer.limit_predict_batches=1", "logger=csv")
# Every method but fuzzy_tuned runs the stage's own defaults, whatever conf/tuned/ holds when it runs.
UNTUNED = "~tuned"
# A distillation teacher keeps no checkpoint (COMMON): it scores the unlabeled rows at the end of its training.
SCORE_UNLABELED = ("+callbacks.unlabeled_probs={_target_:callbacks.unlabeled_probs.UnlabeledProbs,"
                   "output_dir:${paths.output_dir},batch_size:64}")
TUNED_DIR = ROOT / "conf" / "tuned"


@dataclass(frozen=True)
class Cell:
    method: str
    task: str
    split: str

    def run_dir(self, out: Path) -> Path:
        return out / self.method / self.task / self.split

    def done(self, out: Path) -> bool:
        return RunFolder.is_run(self.run_dir(out))


# Fuzzy-PET with other word scores / pooling (stage.word_score, stage.pooling); fuzzy is sum/words.
SCORING = {
    "fuzzy_mean": ["stage.word_score=mean"],
    "fuzzy_cal": ["stage.word_score=calibrated"],
    "fuzzy_cal_sets": ["stage.word_score=calibrated", "stage.pooling=sets"],
    "fuzzy_cal_init": ["stage.word_score=calibrated_initial"],
}
SCORING_TITLES = {"fuzzy_mean": "mean/words", "fuzzy_cal": "calibrated/words", "fuzzy_cal_sets": "calibrated/sets",
                  "fuzzy_cal_init": "calibrated_initial/words"}


@cache
def task_spec(task: str) -> TaskSpec:
    (spec,) = load_task_specs([task])
    return spec


def label_word_sets(task: str) -> list[str]:
    """The task's label-word set names (pattern 0); chid scores its candidates and has none."""
    return list(task_spec(task).verbalizers_for(0))


def word_lengths(task: str) -> set[int]:
    """The characters per label word over the task's sets (pattern 0)."""
    return {len(word) for table in task_spec(task).verbalizers_for(0).values() for words in table.values() for word in words}


def has_tuned(task: str) -> bool:
    return (TUNED_DIR / f"{task}_fuzzy_pet.yaml").is_file()


def methods_of(task: str) -> list[str]:
    methods = ["finetune", "fuzzy", *(["fuzzy_tuned"] if has_tuned(task) else []), *SCORING,
               *(f"pet_{name}" for name in label_word_sets(task))]
    if len(word_lengths(task)) > 1:
        methods.append("fuzzy_longest")
    if task in WITH_UNLABELED:
        methods += ["fuzzy_st", "distill"]
    return methods


def phase(cell: Cell) -> int:
    """Queue order: fine-tuning and Fuzzy-PET on every task's split 0, then on the other splits of the smaller tasks,
    then the scoring options, PET's single sets, self-training and distillation, then the large tasks' other splits."""
    large_later = cell.task in ("tnews", "iflytek", "csldcp") and cell.split != "0"
    if cell.method in ("finetune", "fuzzy", "fuzzy_tuned"):
        base = 0 if cell.split == "0" else 1
    else:
        base = {"fuzzy_st": 4, "distill": 4}.get(cell.method, 2 if cell.method in (*SCORING, "fuzzy_longest") else 3)
    return base + (5 if large_later else 0)


def plan(tasks, splits, methods) -> list[Cell]:
    cells = [Cell(m, t, s) for t in tasks for s in splits for m in methods_of(t) if not methods or _wanted(m, methods)]
    return sorted(cells, key=lambda c: (phase(c), int(c.split) if c.split.isdigit() else 9, TASKS.index(c.task)))


def _wanted(method: str, methods: list[str]) -> bool:
    return method in methods or (method.startswith("pet_") and "pet" in methods)


def overrides(cell: Cell, out: Path) -> list[str]:
    task = [f"task={cell.task}", f"data.split={cell.split}"]
    if cell.method == "finetune":
        epochs = FINETUNE_EPOCHS.get(cell.task)
        return ["experiment=finetune_zh_mlm_small", *task, *([f"trainer.max_epochs={epochs}"] if epochs else [])]
    if cell.method == "distill":
        teachers = [Cell(m, cell.task, cell.split).run_dir(out) for m in methods_of(cell.task)
                    if m == "fuzzy" or m.startswith("pet_")]
        encoder = os.environ.get("ZH_MLM_SMALL", str(ROOT.parent / "shared" / "encoders" / "zh-mlm-small"))
        return ["stage=distill", "model=hf", f"model.pretrained={encoder}", *task,
                f"distill.teachers=[{','.join(str(t) for t in teachers)}]"]
    extra = {"fuzzy": [], "fuzzy_tuned": [], "fuzzy_st": ["callbacks.self_training.rounds=1"], "fuzzy_longest": ["stage.slots=longest"],
             **SCORING}.get(cell.method)
    if extra is None:  # pet_<set>
        extra = [f"verbalizer={cell.method.removeprefix('pet_')}"]
    if teaches(cell):  # its checkpoint is not kept: it scores the unlabeled rows for the distillation at its end
        extra = [*extra, SCORE_UNLABELED]
    return ["experiment=fuzzy_pet_zh_mlm_small", *task, *extra]


def teaches(cell: Cell) -> bool:
    """A teacher of the task's distillation cell (the fuzzy and PET runs of a task with unlabeled rows)."""
    return cell.task in WITH_UNLABELED and (cell.method == "fuzzy" or cell.method.startswith("pet_"))


def ready(cell: Cell, out: Path) -> bool:
    """A distillation cell waits for its teachers' unlabeled_probs.pt (their checkpoints are not kept, so the rows
    are scored at the end of their training; a run seeded from elsewhere may lack them)."""
    if cell.method != "distill":
        return True
    return all((RunFolder(Cell(m, cell.task, cell.split).run_dir(out)).unlabeled_probs_path).is_file()
               for m in methods_of(cell.task) if teaches(Cell(m, cell.task, cell.split)))


def command(cell: Cell, out: Path) -> list[str]:
    untuned = [] if cell.method == "fuzzy_tuned" else [UNTUNED]
    return [sys.executable, str(ROOT / "train.py"), *overrides(cell, out), *COMMON, *untuned,
            f"hydra.run.dir={cell.run_dir(out)}"]


def run_queue(cells: list[Cell], out: Path) -> int:
    todo = [c for c in cells if not c.done(out)]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells done; {len(todo)} to run", flush=True)
    failed = 0
    for i, cell in enumerate(todo, 1):
        if cell.done(out):  # another queue over the same cells got there first
            continue
        if not ready(cell, out):
            print(f"[{i}/{len(todo)}] {cell}: teachers missing, skipped", flush=True)
            continue
        run_dir = cell.run_dir(out)
        run_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with open(run_dir / "train.log", "w", encoding="utf-8") as log:
            code = subprocess.call(command(cell, out), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wall = time.monotonic() - start
        if code == 0 and cell.done(out):
            (run_dir / "wall_s.json").write_text(json.dumps({"wall_s": round(wall, 1)}) + "\n", encoding="utf-8")
        else:
            failed += 1
        print(f"[{i}/{len(todo)}] {cell.method} {cell.task} split {cell.split}: exit {code}, {wall:.0f} s "
              f"({run_dir / 'train.log'})", flush=True)
    return 1 if failed else 0


# -- the table ---------------------------------------------------------------------------------------------------
def collect(out: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(method, task) -> {split: dev accuracy}."""
    found: dict[tuple[str, str], dict[str, float]] = {}
    for path in sorted(out.glob(f"*/*/*/{RESULTS_FILE}")):
        method, task, split = path.parts[-4:-1]
        acc = RunFolder(path.parent).results.val_acc
        if acc is not None:
            found.setdefault((method, task), {})[split] = 100 * acc
    return found


def walls(out: Path) -> dict[tuple[str, str], float]:
    """(method, task) -> median wall seconds of its runs."""
    seconds: dict[tuple[str, str], list[float]] = {}
    for path in out.glob("*/*/*/wall_s.json"):
        method, task = path.parts[-4:-2]
        seconds.setdefault((method, task), []).append(json.loads(path.read_text(encoding="utf-8"))["wall_s"])
    return {key: statistics.median(values) for key, values in seconds.items()}


def summary(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f} (n=1)"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} (n={len(values)})"


def pet_extremes(found, task: str) -> tuple[str | None, str | None]:
    """The task's PET sets with the best and the worst mean dev accuracy (over the splits each has)."""
    means = {m: statistics.mean(v.values()) for (m, t), v in found.items() if t == task and m.startswith("pet_")}
    if not means:
        return None, None
    return max(means, key=means.get), min(means, key=means.get)


COLUMNS = ("finetune", "pet_best", "pet_worst", "fuzzy", "fuzzy_tuned", "fuzzy_st", "distill")
TITLES = {"finetune": "fine-tuning", "pet_best": "PET best set", "pet_worst": "PET worst set", "fuzzy": "Fuzzy-PET",
          "fuzzy_tuned": "Fuzzy-PET, default command (conf/tuned)",
          "fuzzy_st": "Fuzzy-PET + self-training", "distill": "distilled ensemble"}


def fuzzy_method(found, task: str) -> str:
    """The Fuzzy-PET runs of a task: exact slots, or stage.slots=longest where only those ran (the large tasks, whose
    exact runs cost 3-5 passes per batch)."""
    return "fuzzy_longest" if ("fuzzy", task) not in found and ("fuzzy_longest", task) in found else "fuzzy"


def default_command_method(found, task: str) -> str:
    """What ``python train.py stage=fuzzy_pet task=T ...`` runs: conf/tuned where it has the task, else the stage."""
    return "fuzzy_tuned" if has_tuned(task) else fuzzy_method(found, task)


def table(out: Path) -> str:
    found, seconds = collect(out), walls(out)
    tasks = [t for t in TASKS if any(task == t for _, task in found)]
    lines = ["Dev accuracy (%), mean ± sample std over the splits run (n), shared encoder zh-mlm-small.", "",
             "| task | " + " | ".join(TITLES[c] for c in COLUMNS) + " | PET spread (best − worst) | wall s per run (ft / fuzzy) |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    task_means: dict[str, dict[str, float]] = {c: {} for c in COLUMNS}
    split0: dict[str, dict[str, float]] = {c: {} for c in COLUMNS}  # the one split every task can afford
    for task in tasks:
        best, worst = pet_extremes(found, task)
        chosen = {"pet_best": best, "pet_worst": worst, "fuzzy": fuzzy_method(found, task),
                  "fuzzy_tuned": default_command_method(found, task)}
        cells, spread = [], "–"
        for column in COLUMNS:
            runs = found.get((chosen.get(column, column), task), {})
            values = list(runs.values())
            if values:
                task_means[column][task] = statistics.mean(values)
            if "0" in runs:
                split0[column][task] = runs["0"]
            label = summary(values)
            if column in ("pet_best", "pet_worst") and chosen[column]:
                label += f" {chosen[column].removeprefix('pet_')}"
            elif column == "fuzzy" and chosen[column] == "fuzzy_longest":
                label += " slots=longest"
            elif column == "fuzzy_tuned" and chosen[column] != "fuzzy_tuned" and values:
                label = "(= Fuzzy-PET)"
            cells.append(label)
        if best and worst:
            spread = f"{task_means['pet_best'][task] - task_means['pet_worst'][task]:.1f}"
        wall = " / ".join(f"{seconds[(m, task)]:.0f}" if (m, task) in seconds else "–" for m in ("finetune", chosen["fuzzy"]))
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {spread} | {wall} |")
    for title, means in (("**FewCLUE score**", task_means), ("FewCLUE score, split 0 only", split0)):
        score = [f"{statistics.mean(means[c].values()):.1f}" if len(means[c]) == len(TASKS) else
                 f"({len(means[c])} of {len(TASKS)} tasks)" for c in COLUMNS]
        lines.append(f"| {title} | " + " | ".join(score) + " | | |")
    lines += ["", *claims(found, tasks), "", *scoring_table(found, tasks), "", *slots_table(found, seconds, tasks)]
    return "\n".join(lines) + "\n"


def scoring_table(found, tasks: list[str]) -> list[str]:
    """Fuzzy-PET's scoring options against sum/words (the default): each option's mean over the splits it shares with
    sum/words, and the difference on those same splits; last row the mean difference over the tasks that have it."""
    lines = ["Fuzzy-PET scoring options (dev %: mean over the splits each option shares with sum/words, the default; "
             "in brackets the difference from sum/words on those splits and their count):", "",
             "| task | sum/words (splits) | " + " | ".join(SCORING_TITLES[o] for o in SCORING) + " |",
             "|---|---|" + "---|" * len(SCORING)]
    gains: dict[str, list[float]] = {o: [] for o in SCORING}
    for task in tasks:
        base = found.get(("fuzzy", task), {})
        cells = []
        for option in SCORING:
            runs = found.get((option, task), {})
            splits = sorted(set(base) & set(runs))
            if not splits:
                cells.append("–")
                continue
            mean = statistics.mean(runs[s] for s in splits)
            gain = mean - statistics.mean(base[s] for s in splits)
            gains[option].append(gain)
            cells.append(f"{mean:.1f} ({gain:+.1f}, n={len(splits)})")
        if any(c != "–" for c in cells):
            lines.append(f"| {task} | {statistics.mean(base.values()):.1f} ({','.join(sorted(base))}) | " + " | ".join(cells) + " |")
    if any(gains.values()):
        lines.append("| mean difference | | " + " | ".join(
            f"{statistics.mean(g):+.1f} ({len(g)} tasks)" if g else "–" for g in gains.values()) + " |")
    return lines


def slots_table(found, seconds, tasks: list[str]) -> list[str]:
    """stage.slots=exact (one pass per word length) vs longest (one pass): dev accuracy on the same splits, wall time."""
    lines = ["stage.slots on tasks whose label words have several lengths (dev %, same splits; median wall s per run):", "",
             "| task | splits | exact | longest | wall exact / longest |", "|---|---|---|---|---|"]
    for task in tasks:
        exact, longest = found.get(("fuzzy", task), {}), found.get(("fuzzy_longest", task), {})
        splits = sorted(set(exact) & set(longest))
        if not splits:
            continue
        wall = " / ".join(f"{seconds[(m, task)]:.0f}" if (m, task) in seconds else "–" for m in ("fuzzy", "fuzzy_longest"))
        lines.append(f"| {task} | {','.join(splits)} | {statistics.mean(exact[s] for s in splits):.1f} | "
                     f"{statistics.mean(longest[s] for s in splits):.1f} | {wall} |")
    return lines


def claims(found, tasks: list[str]) -> list[str]:
    """The claims the table is there to check, each on the splits both sides have (paired, not the columns' means)."""
    lines = []
    at_least, upper_half, compared, gaps = [], [], [], []
    for task in tasks:
        sets = sorted(m for (m, t) in found if t == task and m.startswith("pet_"))
        runs = [found.get(("fuzzy", task), {}), *(found[(m, task)] for m in sets)]
        splits = set.intersection(*(set(r) for r in runs)) if sets else set()
        if not splits:
            continue
        fuzzy, *per_set = (statistics.mean(r[s] for s in splits) for r in runs)
        best, worst = max(per_set), min(per_set)
        compared.append(f"{task} n={len(splits)}")
        gaps.append(fuzzy - worst)
        if fuzzy >= best:
            at_least.append(task)
        if best - fuzzy <= (best - worst) / 2:
            upper_half.append(task)
    if compared:
        lines += [
            f"- Fuzzy-PET ≥ the best single set on {len(at_least)} of {len(compared)} tasks ({', '.join(at_least) or 'none'}); "
            f"splits where every set and Fuzzy-PET ran: {', '.join(compared)}.",
            f"- Fuzzy-PET in the upper half of the sets' range (best − Fuzzy-PET ≤ (best − worst) / 2) on {len(upper_half)} of "
            f"{len(compared)} tasks ({', '.join(upper_half) or 'none'}).",
            f"- Fuzzy-PET minus the worst set: {statistics.mean(gaps):+.1f} points on average (the risk a single set carries).",
        ]
    for title, method_of in (("Fuzzy-PET", lambda task: fuzzy_method(found, task)),
                             ("The default command (conf/tuned where it has the task)",
                              lambda task: default_command_method(found, task))):
        diffs, wins = {}, []
        for task in tasks:
            fuzzy, finetune = found.get((method_of(task), task), {}), found.get(("finetune", task), {})
            splits = sorted(set(fuzzy) & set(finetune))
            if splits:
                diffs[task] = statistics.mean(fuzzy[s] - finetune[s] for s in splits)
                wins.append(f"{task} {diffs[task]:+.1f} (n={len(splits)})")
        if diffs:
            lines.append(f"- {title} minus fine-tuning on the same splits, mean over {len(diffs)} tasks: "
                         f"{statistics.mean(diffs.values()):+.1f} points ({', '.join(wins)}).")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("run", "plan", "table"))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "method_table")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS))
    parser.add_argument("--methods", nargs="+", default=[],
                        help="finetune fuzzy pet (every set) pet_<set> fuzzy_st distill; default: all")
    parser.add_argument("--write", type=Path, help="table: also write the markdown here")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.action == "table":
        text = table(out)
        print(text)
        if args.write:
            args.write.write_text(text, encoding="utf-8")
        return 0
    cells = plan(args.tasks, args.splits, args.methods)
    if args.action == "plan":
        for cell in cells:
            if not cell.done(out):
                print(" ".join(command(cell, out)[1:]))
        return 0
    return run_queue(cells, out)


if __name__ == "__main__":
    sys.exit(main())
