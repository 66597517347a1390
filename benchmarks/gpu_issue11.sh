#!/usr/bin/env bash
# Issue 11's measurement in one script, for a GPU host (H100 / H200) with onnxruntime-gpu
# installed (../shared/gpu/README.md). Writes everything under ${OUT:-/tmp/gpu11}:
#   export.log, pytest.log, bench.json, bench.md
# Not yet run: no session of this project has had a GPU since it was written.
set -uo pipefail
OUT=${OUT:-/tmp/gpu11}
mkdir -p "$OUT"
ART="$OUT/artefacts"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# 1. The variants, gated on the CPU and (measure_elsewhere) on the CUDA provider.
timeout 240 python export.py --towers vision --variants opt,fp16,cuda-fp16,cuda-fp16-u8 --output-dir "$ART" \
  > "$OUT/export.log" 2>&1; echo "export rc=$?" | tee -a "$OUT/export.log"
grep -E "verify|REJECTED" "$OUT/export.log"
# 2. The GPU tests.
timeout 120 python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_variants.py tests/test_runtime.py \
  > "$OUT/pytest.log" 2>&1; tail -5 "$OUT/pytest.log"
# 3. The targets' table: both modes, batch 1, 8, 64, 256, with the fp16 GEMM floor of the same run.
timeout ${BENCH_TIMEOUT:-420} python benchmarks/run.py --artefacts "$ART" --batch-sizes 1,8,64,256 \
  --iterations 30 --warmup 5 --budget-s 4 \
  --backends torch-cuda-fp16,torch-cuda-half,torch-cuda-half-resident,torch-compile-half,torch-compile-half-resident,ort-cuda,ort-cuda-graph,ort-cuda-resident \
  --json "$OUT/bench.json" > "$OUT/bench.md" 2>&1; echo "bench rc=$?"
cat "$OUT/bench.md"
# 4. The attention kernel (ONNX Runtime's CUDA option sdpa_kernel: 1 flash, 2 memory-efficient) against the default.
for k in 1 2; do
  timeout 120 python benchmarks/run.py --artefacts "$ART" --batch-sizes 1,256 --iterations 30 --warmup 5 --budget-s 4 \
    --backends ort-cuda-resident --cuda-option sdpa_kernel=$k --json "$OUT/sdpa$k.json" > "$OUT/sdpa$k.md" 2>&1
  echo "sdpa_kernel=$k rc=$?"; grep -E "cuda-fp16" "$OUT/sdpa$k.md"
done
