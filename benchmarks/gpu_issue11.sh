#!/usr/bin/env bash
# Issue 11's measurement for a GPU host (H100 / H200) with onnxruntime-gpu installed
# (../shared/gpu/README.md), in steps that each fit one device call (at most 10 minutes):
#
#   bash benchmarks/gpu_issue11.sh export   # the variants, gated on the CPU and the CUDA provider; gpu tests
#   bash benchmarks/gpu_issue11.sh ort      # ORT CUDA rows: host-to-host, CUDA graphs, device-resident
#   bash benchmarks/gpu_issue11.sh torch    # anchors: fp16 eager (.half(), autocast) and torch.compile
#   bash benchmarks/gpu_issue11.sh sdpa     # the attention kernel (sdpa_kernel 1, 2) against the default
#
# Results go under ${OUT:-/tmp/gpu11} (the device tool's $OUT comes back to the caller); the
# artefacts under ${ART:-/tmp/gpu11-artefacts}, which a warm machine keeps between calls.
# Not yet run: no session of this project has had a GPU since it was written.
set -uo pipefail
OUT=${OUT:-/tmp/gpu11}
ART=${ART:-/tmp/gpu11-artefacts}
BATCHES=${BATCHES:-1,8,64,256}
mkdir -p "$OUT"
bench() {  # name, backends, [extra args...]
  local name=$1 backends=$2; shift 2
  timeout ${BENCH_TIMEOUT:-420} python benchmarks/run.py --artefacts "$ART" --batch-sizes "$BATCHES" \
    --iterations 30 --warmup 5 --budget-s 4 --backends "$backends" --json "$OUT/$name.json" "$@" \
    > "$OUT/$name.md" 2>&1
  echo "$name rc=$?"; grep -E "^\|" "$OUT/$name.md"
}
case "${1:-}" in
  export)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    timeout 240 python export.py --towers vision --variants cuda-fp16,cuda-fp16-u8 --output-dir "$ART" \
      > "$OUT/export.log" 2>&1; echo "export rc=$?"; grep -E "verify|REJECTED" "$OUT/export.log"
    timeout 180 python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_variants.py tests/test_runtime.py \
      > "$OUT/pytest.log" 2>&1; tail -5 "$OUT/pytest.log" ;;
  ort) bench ort ort-cuda,ort-cuda-graph,ort-cuda-resident ;;
  torch) bench torch torch-cuda-fp16,torch-cuda-half,torch-cuda-half-resident,torch-compile-half-resident ;;
  sdpa)
    for k in 1 2; do BATCHES=1,256 BENCH_TIMEOUT=200 bench "sdpa$k" ort-cuda-resident --cuda-option "sdpa_kernel=$k"; done ;;
  *) echo "usage: bash benchmarks/gpu_issue11.sh export|ort|torch|sdpa" >&2; exit 2 ;;
esac
