#!/usr/bin/env bash
# Every GPU check of the project in one short run, for a session that is lent a CUDA machine.
#
#   bash benchmarks/gpu_session.sh            # on the device machine, from the repository root
#
# Stages (each with its own time limit, so one slow stage cannot eat the others):
#   1. the CUDA tests (tests/test_gpu.py and anything marked gpu)
#   2. edit latency per family on random full-size encoders (SD1, SDXL, SD3, FLUX), then the LLM families
#      (Lumina 2, Z-Image, CogView4, HiDream, Qwen-Image, FLUX.2) at their real widths with 8 blocks each,
#      and C at each real down_proj width (9216..32768: fp32 accumulation, dense fp64 solve, rank-256 solve)
#   3. the 90-row text-space `refact bench` (target: < 10 s in total) and TIME/UCE seconds per row
#   4. image protocol throughput against plain diffusers batched generation (target: >= 0.9x)
# Each bench rewrites its own section of BENCHMARKS.md; logs and the JSON lines go to $OUT (or ./gpu-out).
# About 13 minutes on an H100/H200 once the venv exists. Nothing is downloaded.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
status=0

stage() {  # stage NAME SECONDS CMD...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc, $((SECONDS - t0)) s (last line: $(tail -n 1 "$OUT/$name.log" | cut -c1-200))"
    [ "$rc" -eq 0 ] || status=1
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" \
    || { echo "no CUDA device: nothing to do"; exit 2; }
stage gpu_tests 120 "$PY" -m pytest -q -m gpu tests
stage edit_latency 200 "$PY" benchmarks/edit_latency.py --device cuda --arch sd1 sdxl sd3 flux \
    --t5-blocks 6 --t5-steps 20 --mom-width 10240 --repeats 3
stage edit_latency_llm 300 "$PY" benchmarks/edit_latency.py --device cuda --arch lumina2 z-image cogview4 hidream \
    qwen-image flux2 --llm-blocks 8 --llm-steps 20 --timed-steps 20 --mom-widths 9216 9728 13696 14336 18944 32768 \
    --mom-tokens 1024
stage bench_protocol 200 "$PY" benchmarks/bench_protocol.py --device cuda --rows 90 --closed-form-rows 90
stage eval_throughput 120 "$PY" benchmarks/eval_throughput.py --size full --images 32 --batch 8
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
exit $status
