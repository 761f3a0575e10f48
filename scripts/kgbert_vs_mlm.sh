#!/usr/bin/env bash
# Does knowledge help? stage=kgbert vs stage=mlm vs stage=mlm stage.whole_word_mentions=true, each continued from the
# shared encoder ($ZH_MLM_SMALL) for the same number of steps with the same seed and batch, then Fuzzy-PET on the
# exported encoders (dev accuracy over splits), next to each run's held-out knowledge probe (val/mention_acc,
# val/gain, val/acc on the held-out corpus sentences, masked the same way in every variant).
#
#   scripts/kgbert_vs_mlm.sh                                   # defaults below
#   STEPS=2000 TASKS=eprstmt,tnews,csldcp SPLITS=0,1,2,3,4 scripts/kgbert_vs_mlm.sh
#   VARIANTS="base kgbert mlm mlm_wwm" ...                     # base: Fuzzy-PET on $ZH_MLM_SMALL as it is
#   PRETRAIN_ARGS="trainer.limit_val_batches=2" PET_ARGS="trainer.max_epochs=1" ...   # extra overrides per step
#
# Settings (environment): STEPS (pretraining steps, 2000), TASKS (eprstmt,tnews,csldcp), SPLITS (0,1,2,3,4),
# SEED (42), VARIANTS ("kgbert mlm mlm_wwm"), OUT (outputs/kgbert_vs_mlm/<date_time>), PYTHON (python).
# Runs land in $OUT/pretrain/<variant> and $OUT/fuzzy_pet/<variant>/<n>; the table is printed and written
# to $OUT/table.md. A pretraining run whose results.json exists, and a Fuzzy-PET sweep with every results.json, are
# skipped, so a stopped comparison resumes by rerunning it with the same OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-2000}"
TASKS="${TASKS:-eprstmt,tnews,csldcp}"
SPLITS="${SPLITS:-0,1,2,3,4}"
SEED="${SEED:-42}"
VARIANTS="${VARIANTS:-kgbert mlm mlm_wwm}"
OUT="${OUT:-outputs/kgbert_vs_mlm/$(date +%Y-%m-%d_%H-%M-%S)}"
PYTHON="${PYTHON:-python}"
ENCODER="${ZH_MLM_SMALL:-../shared/encoders/zh-mlm-small}"
mkdir -p "$OUT"

for variant in $VARIANTS; do
  case "$variant" in
    base) stage="" ;;
    kgbert) stage="stage=kgbert" ;;
    mlm) stage="stage=mlm stage.whole_word_mentions=false" ;;
    mlm_wwm) stage="stage=mlm stage.whole_word_mentions=true" ;;
    *) echo "error: unknown variant '$variant'; allowed: base kgbert mlm mlm_wwm" >&2; exit 2 ;;
  esac
  encoder="$ENCODER"
  run="$OUT/pretrain/$variant"
  if [ -z "$stage" ]; then
    if [ ! -f "$run/results.json" ]; then
      # The encoder's own probe: one stage=mlm step at learning rate 0 leaves the weights as they are, then the same
      # held-out validation as the other variants (stage=mlm refuses 0 steps).
      "$PYTHON" train.py stage=mlm model=hf model.pretrained="$ENCODER" callbacks=pretrain seed="$SEED" \
        stage.optim.lr=0 trainer.max_steps=1 trainer.max_epochs=-1 stage.export_dir=null \
        keep_checkpoints=false hydra.run.dir="$run" ${PRETRAIN_ARGS:-}
    fi
  else
    if [ ! -f "$run/results.json" ]; then
      # callbacks=pretrain: the last weights are exported and measured (no selection on the held-out slice).
      # shellcheck disable=SC2086  # $stage and PRETRAIN_ARGS hold several overrides
      "$PYTHON" train.py $stage model=hf model.pretrained="$ENCODER" callbacks=pretrain seed="$SEED" \
        trainer.max_steps="$STEPS" trainer.max_epochs=-1 \
        keep_checkpoints=false hydra.run.dir="$run" ${PRETRAIN_ARGS:-}
    fi
    encoder="$run/export"
  fi
  sweep="$OUT/fuzzy_pet/$variant"
  expected=$(( $(tr ',' '\n' <<< "$TASKS" | wc -l) * $(tr ',' '\n' <<< "$SPLITS" | wc -l) ))
  if [ "$(find "$sweep" -name results.json 2>/dev/null | wc -l)" -lt "$expected" ]; then  # a stopped sweep reruns whole
    # shellcheck disable=SC2086
    "$PYTHON" train.py -m experiment=fuzzy_pet_zh_mlm_small model.pretrained="$encoder" task="$TASKS" \
      data.split="$SPLITS" seed="$SEED" keep_checkpoints=false trainer.limit_predict_batches=1 \
      hydra.sweep.dir="$sweep" ${PET_ARGS:-}
  fi
done

"$PYTHON" - "$OUT" $VARIANTS <<'PY'
import statistics, sys
from pathlib import Path

from datamodules.runs.results import RESULTS_FILE, RunFolder

out, variants = Path(sys.argv[1]), sys.argv[2:]
def fmt(values):
    if not values:
        return "-"
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f} (n={len(values)})" if len(values) > 1 else f"{mean:.1f} (n=1)"
def num(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"

runs = {v: [RunFolder(p.parent).results.to_dict() for p in sorted((out / "fuzzy_pet" / v).rglob(RESULTS_FILE))]
        for v in variants}
tasks = sorted({r["task"] for rs in runs.values() for r in rs})
lines = ["## Fuzzy-PET dev accuracy (%) from each encoder, mean ± sample std over splits", "",
         "| variant | " + " | ".join(tasks) + " | mean over tasks |", "|---" * (len(tasks) + 2) + "|"]
for v in variants:
    per_task = {t: [r["val/acc"] for r in runs[v] if r["task"] == t and r.get("val/acc") is not None] for t in tasks}
    means = [statistics.mean(s) for s in per_task.values() if s]
    overall = f"{100 * statistics.mean(means):.1f}" if len(means) == len(tasks) and means else "-"
    lines.append(f"| {v} | " + " | ".join(fmt(per_task[t]) for t in tasks) + f" | {overall} |")
lines += ["", "## Pretraining runs: held-out probe (same masks in every variant) and masking", "",
          "| variant | steps | val/acc | val/mention_acc | val/gain | val/loss | kg/mention_mask_rate (1-2 / 3-4 / 5-8 / 9+) |",
          "|---|---|---|---|---|---|---|"]
for v in variants:
    folder = RunFolder(out / "pretrain" / v)
    if not folder.results_file.is_file():
        lines.append(f"| {v} | - | - | - | - | - | - |")
        continue
    r = folder.results.to_dict()
    if v == "base":
        r["global_step"] = "0 (the encoder as it is)"
    buckets = " / ".join(num(r.get(f"kg/mention_mask_rate/{b}"), 3) for b in ("1-2", "3-4", "5-8", "9+"))
    lines.append(f"| {v} | {r.get('global_step')} | {num(r.get('val/acc'))} | {num(r.get('val/mention_acc'))} | "
                 f"{num(r.get('val/gain'))} | {num(r.get('val/loss'))} | {num(r.get('kg/mention_mask_rate'), 3)} ({buckets}) |")
table = "\n".join(lines) + "\n"
(out / "table.md").write_text(table)
print(table)
PY
