#!/usr/bin/env bash
# The pretraining chain kgbert -> entailment -> fuzzy_pet; each step loads the previous step's export.
#   scripts/pretrain_chain.sh [task] [overrides for every step ...]
#   KGBERT_ARGS="model=hf model.pretrained=../shared/encoders/zh-mlm-small" scripts/pretrain_chain.sh ocnli
#   FINAL_ARGS="data.data_dir=/path/to/fewclue-with-test_public" scripts/pretrain_chain.sh ocnli
# Runs land in $CHAIN_DIR (default outputs/chain/<date_time>)/{kgbert,entailment,fuzzy_pet}.
set -euo pipefail
cd "$(dirname "$0")/.."
task="${1:-ocnli}"
shift || true
run="${CHAIN_DIR:-outputs/chain/$(date +%Y-%m-%d_%H-%M-%S)}"
# shellcheck disable=SC2086  # the *_ARGS variables hold several overrides
python train.py experiment=chain_kgbert hydra.run.dir="$run/kgbert" ${KGBERT_ARGS:-} "$@"
# shellcheck disable=SC2086
python train.py experiment=chain_entailment model.pretrained="$run/kgbert/export" hydra.run.dir="$run/entailment" \
  ${ENTAILMENT_ARGS:-} "$@"
# shellcheck disable=SC2086
python train.py experiment=chain_fuzzy_pet task="$task" model.pretrained="$run/entailment/export" \
  hydra.run.dir="$run/fuzzy_pet" ${FINAL_ARGS:-} "$@"
python - "$run" <<'PY'
import sys
from datamodules.runs.results import RunFolder
for step in ("kgbert", "entailment", "fuzzy_pet"):
    results = RunFolder(f"{sys.argv[1]}/{step}").results.to_dict()  # export_dir resolved in the run folder
    print(step, {k: results.get(k) for k in ("val/acc", "test/acc", "export_dir")})
PY
