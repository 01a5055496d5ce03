#!/usr/bin/env bash
# Where does the ratio line's transition lie at GPU scale? A ladder only (no target): the rungs of a
# target's tokens-per-parameter line from ~1e14 to ~2e16 FLOPs, then `ladder fit`, whose regime
# check prints the local slopes and the curvature along the line. On the CPU the line was still
# steepening at 1.4e14 FLOPs / 21M tokens per rung (docs/devlog.md, 2026-11-30); a line
# that turns convex here says how large a target rungs at 1/1,000 need. Run from the repository root:
#   bash bench/gpu_transition.sh [--section.key=value ...]     (overrides of the target)
# TARGET (default gpu_large), PLAN (the ladder-plan options below), LIMIT (seconds for the ladder,
# default 480; it resumes if run again on the same machine). Writes to $OUT: gpu.txt, fit.txt and
# transition.tgz (plan, reports, metrics; no checkpoints).
set -u
OUT=${OUT:-/tmp/gpu_out}
TARGET=${TARGET:-gpu_large}
PLAN=${PLAN:---max-fraction 1.6e-3 --budget-fraction 4e-3 --sizes 6 --min-steps 100 --width-step 32 --ratios 0.5,1}
LAD=${LAD:-runs/gpu_transition}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
# shellcheck disable=SC2086
python3 -m glassgpt.cli ladder plan --target "$TARGET" "$@" $PLAN --ladder "$LAD" | tee "$OUT/plan.txt" || exit 1
timeout "${LIMIT:-480}" python3 -m glassgpt.cli ladder run --ladder "$LAD" --workers "${WORKERS:-5}" --no-capability > "$OUT/ladder.log" 2>&1
echo "ladder run exit: $?" | tee -a "$OUT/ladder.log"
python3 -m glassgpt.cli ladder fit --ladder "$LAD" 2>&1 | tee "$OUT/fit.txt"
tar czf "$OUT/transition.tgz" --exclude=checkpoints "$LAD" runs/cache/*/manifest.json runs/cache/*/bigram.json 2>/dev/null
ls -la "$OUT"
