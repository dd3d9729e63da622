#!/bin/bash
# A maintainer's check of a GPU (or TPU) machine, in under 10 minutes: one JSON line per figure on
# stdout (logs on stderr). Run from anywhere, after `make install` and pip install -e '.[gpu]':
#
#   scripts/device_check.sh > device_check.jsonl
#
# Figures: device (platform, kind, count, JAX version); tests (the default suite's tests that do
# not depend on the platform, run on the device: passed / failed / seconds); main_job (configs/
# default.py for 300 steps: train images/s, test loss in nats); train_step/unet64 and
# train_step/vae_fmnist (benchmarks.run --only=reference: images/s and the fraction of the
# device's measured matmul peak) in float32, bfloat16 and float16. A stage that fails or runs out
# of its time prints a line with its error instead; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

stage() {  # stage NAME SECONDS COMMAND...: run it; on failure one JSON line naming the stage.
  local name=$1 seconds=$2 status
  shift 2
  timeout "$seconds" "$@" 2> "$tmp/$name.err"
  status=$?
  if [ "$status" -ne 0 ]; then
    # The reason: the time limit, or the last line of the stage's stderr (progress bars dropped).
    local why
    if [ "$status" -eq 124 ]; then why="timed out after ${seconds} s"
    else why="exit $status: $(tr '\r' '\n' < "$tmp/$name.err" | grep -v '^\s*$' | tail -n 1 | tail -c 400)"
    fi
    "$py" -c 'import json, sys; print(json.dumps({"figure": sys.argv[1], "error": sys.argv[2]}))' \
      "$name" "$why"
  fi
}

stage device 60 "$py" -c '
import json, jax
d = jax.devices()[0]
print(json.dumps({"figure": "device", "platform": d.platform, "kind": d.device_kind,
                  "count": jax.device_count(), "jax": jax.__version__}))'

# Tests of the numerics (losses, models, layers, objectives, mixed precision) on the device: the
# suite forces 4 CPU devices, so the platform is chosen here instead of conftest's default.
tests="tests/test_losses.py tests/test_seg_losses.py tests/test_losses_classification.py
       tests/test_layers.py tests/test_models.py tests/test_seg_models.py
       tests/test_mixed_precision.py tests/test_objectives.py"
stage tests 240 "$py" -c '
import json, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       *sys.argv[1:]], capture_output=True, text=True)
tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
counts = {k: int(n) for n, k in (w.split() for w in tail.split(" in ")[0].split(", "))
          if k in ("passed", "failed", "skipped", "errors", "error")} if " in " in tail else {}
print(json.dumps({"figure": "tests", **counts, "seconds": time.perf_counter() - start,
                  "summary": tail}))' $tests

stage main_job 180 bash -c "
  '$py' train.py --config=configs/default.py --workdir='$tmp/main_job' \
    --config.num_train_steps=300 --config.eval_every_steps=300 \
    --config.checkpoint_every_steps=300 > /dev/null &&
  '$py' -c 'import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({\"figure\": \"main_job\", \"steps\": r[\"step\"],
                  \"train_images_per_s\": r[\"train_images_per_s\"],
                  \"test_loss_nats\": r[\"test\"][\"loss\"]}))' '$tmp/main_job/results.json'"

# The first one also prepares the scenes dataset of unet64 on a fresh machine (built once).
for dtype in float32 bfloat16 float16; do
  stage "train_step_$dtype" "$([ "$dtype" = float32 ] && echo 160 || echo 100)" \
    "$py" -m benchmarks.run --only=reference \
    --compute_dtype="$dtype" --output="$tmp/bench_$dtype.json"
done
