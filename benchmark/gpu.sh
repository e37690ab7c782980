#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one command: bench.py at P and S under the JAX and the
# PyTorch backends, float32 and mixed precision (float16 on a GPU), each beside the PyTorch reference
# step on the same GPU, with both peak GPU memories. Needs keras and the CUDA builds of jax and torch.
#
#     benchmark/gpu.sh [more bench.py options]    # a log per run in bench_logs/, a summary at the end
#
# Settings: BACKENDS ("jax torch"; add tensorflow where its CUDA build is installed), CONFIGS ("P S"),
# PYTHON (python3, with the backends), TORCH_PYTHON (the yardstick's interpreter, python3), LOGS
# (bench_logs) and RUN_SECONDS (each run's limit, 300).
set -uo pipefail
cd "$(dirname "$0")/.."
logs=${LOGS:-bench_logs}
mkdir -p "$logs"
for config in ${CONFIGS:-P S}; do
  for precision in float32 mixed; do
    for backend in ${BACKENDS:-jax torch}; do
      log="$logs/$config-$backend-$precision.log"
      options=(--config "$config" --steps 10 --warmup 3 --rounds 3 --torch "${TORCH_PYTHON:-python3}")
      if [ "$precision" = mixed ]; then options+=(--mixed-precision); fi
      echo "== config $config, $backend, $precision: $log"
      KERAS_BACKEND=$backend timeout -k 10 "${RUN_SECONDS:-300}" "${PYTHON:-python3}" bench.py "${options[@]}" "$@" \
        >"$log" 2>&1 || echo "   ended with exit status $? (the log's end: tail $log)"
    done
  done
done
for log in "$logs"/*.log; do  # the figures that matter, one block per run
  echo "== $(basename "$log" .log)"
  grep -E "^Keras|s/iter|loop / PyTorch|peak GPU" "$log"
done
