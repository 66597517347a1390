#!/usr/bin/env bash
# The GPU measurement for a host (H100 / H200) with onnxruntime-gpu installed
# (../shared/gpu/README.md), as one device call that keeps to a time budget:
#
#   BUDGET_S=540 bash benchmarks/gpu_measure.sh all
#
# Steps, most wanted first; each one is cut at what is left of BUDGET_S, and a step with under
# 30 s left is skipped (its line says so):
#   export  the base preset's cuda-fp16 and cuda-fp16-u8, gated on the CPU and the CUDA provider,
#           while the gpu-marked tests run beside it (both mostly CPU work)
#   cli     `python -m runtime embed --provider auto` and `--provider tensorrt` (one line each?)
#   ort     ORT CUDA rows: host-to-host, CUDA graphs, device-resident, both (b 1, 8, 64, 256)
#   torch   anchors: .half() eager in both modes, torch.compile fp16 device-resident
#   route   the opset-23 standard Attention route against cuda-fp16 (benchmarks/attention_route.py)
#   compile torch.compile fp16 host-to-host
#   sdpa    the attention kernel: sdpa_kernel 1 (flash) and 2 (memory-efficient) against the default
#   plain   the unoptimised fp32 file through the runtime's CUDA path
# A single step runs alone with its name instead of `all`. Logs go to ${LOG:-/tmp/gpu11-logs} and,
# packed after every step, to $OUT/gpu11.tgz (the device tool's $OUT comes back to the caller);
# the artefacts to ${ART:-/tmp/gpu11-artefacts}.
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu11}
LOG=${LOG:-/tmp/gpu11-logs}
ART=${ART:-/tmp/gpu11-artefacts}
BATCHES=${BATCHES:-1,8,64,256}
END=$(( $(date +%s) + ${BUDGET_S:-540} ))
mkdir -p "$OUT" "$LOG"
export PYTHONUNBUFFERED=1

left() { echo $(( END - $(date +%s) )); }
pack() { tar czf "$OUT/gpu11.tgz" -C "$LOG" . 2>/dev/null; }
limit() {  # seconds a step may take: its cap, or what is left less a margin
  local cap=$1 rest; rest=$(( $(left) - 10 )); echo $(( cap < rest ? cap : rest ))
}
ready() {  # step name, cap: says and fails when under 30 s would be left for it
  local t; t=$(limit "$2")
  if [ "$t" -lt 30 ]; then echo "== $1: skipped, $(left) s of the budget left"; return 1; fi
  echo "== $1 (up to $t s, $(left) s left)"
}
bench() {  # name, cap, backends, [extra run.py args...]
  local name=$1 cap=$2 backends=$3; shift 3
  ready "$name" "$cap" || return 0
  timeout "$(limit "$cap")" $PY benchmarks/run.py --artefacts "$ART" --batch-sizes "$BATCHES" \
    --iterations 30 --warmup 5 --budget-s 3 --backends "$backends" --json "$LOG/$name.json" "$@" \
    > "$LOG/$name.md" 2>&1
  echo "$name rc=$?"; grep -E "^\| (ort|torch)|GEMM rates" "$LOG/$name.md"; pack
}

step_export() {
  ready export 300 || return 0
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG/gpu.txt"
  $PY -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__)" \
    | tee -a "$LOG/gpu.txt"
  timeout "$(limit 240)" $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_variants.py tests/test_runtime.py \
    > "$LOG/pytest.log" 2>&1 &
  local tests=$!
  timeout "$(limit 240)" $PY export.py --towers vision --variants cuda-fp16,cuda-fp16-u8 --output-dir "$ART" \
    > "$LOG/export.log" 2>&1
  echo "export rc=$?"; grep -iE "verif|gate|REJECT|error|took|wrote" "$LOG/export.log" | head -20
  wait $tests; echo "gpu tests rc=$?"; tail -4 "$LOG/pytest.log"; pack
}

step_cli() {
  ready cli 60 || return 0
  local photo; photo=$(ls siglip_export/photos/*.jpg | head -1)
  for p in auto tensorrt; do
    timeout 60 $PY -m runtime embed "$ART" "$photo" --output "$LOG/embed-$p.npy" --provider "$p" \
      > "$LOG/embed-$p.out" 2> "$LOG/embed-$p.err"
    echo "embed --provider $p rc=$? stdout $(wc -l < "$LOG/embed-$p.out") lines, stderr $(wc -l < "$LOG/embed-$p.err") lines:"
    head -3 "$LOG/embed-$p.err" "$LOG/embed-$p.out"
  done; pack
}

step_route() {
  ready route 150 || return 0
  timeout "$(limit 150)" $PY benchmarks/attention_route.py "$ART" --batch-sizes 1,64,256 --json "$LOG/route.json" \
    > "$LOG/route.md" 2>&1
  echo "route rc=$?"; grep -vE "torchvision|^\[torch.onnx\]|return cls" "$LOG/route.md" | tail -9; pack
}

step() {
  case "$1" in
    export) step_export ;;
    cli) step_cli ;;
    ort) bench ort 240 ort-cuda,ort-cuda-graph,ort-cuda-resident,ort-cuda-graph-resident --variants cuda-fp16,cuda-fp16-u8 ;;
    torch) bench torch 300 torch-cuda-half,torch-cuda-half-resident,torch-compile-half-resident ;;
    compile) bench compile 150 torch-compile-half ;;  # host-to-host; Inductor's cache has the graphs by now
    route) step_route ;;
    sdpa) for k in 1 2; do BATCHES=1,256 bench "sdpa$k" 60 ort-cuda-resident --variants cuda-fp16 --cuda-option "sdpa_kernel=$k"; done ;;
    plain) BATCHES=1,256 bench plain 60 ort-cuda,ort-cuda-resident --variants plain ;;
    *) echo "usage: bash benchmarks/gpu_measure.sh all|export|cli|ort|torch|route|compile|sdpa|plain" >&2; exit 2 ;;
  esac
}

if [ "${1:-}" = all ]; then
  for s in export cli ort torch route compile sdpa plain; do step "$s"; done
else
  step "${1:-}"
fi
echo "== done, $(left) s of the budget left"
