#!/usr/bin/env bash
# GPU figures in one run of at most 5 minutes: forward ("encode": preprocessing + network
# on a batch already on the GPU) and end-to-end embedding (embed_slide: reading, decoding,
# copies, inference) on CUDA for resnet50_trunc and a ViT-L/16 (UNI's architecture), both
# with random weights; bf16 autocast, channels-last (CNN), SDPA (ViT), pinned buffers.
# Targets on an H200: resnet50_trunc >= 3,000 patches/s end to end, ViT-L/16 >= 1,500.
# Then (skip with WHOLE_SLIDE=0; about 5 more minutes) the real-size slide of
# benchmarks/whole_slide.py (98,304 px, 18,413 patches) through the whole ghanet predict
# path with a random-weight resnet50_trunc bundle on CUDA: time by stage, patches/s, peak
# RSS (whole_slide.json / .txt).
#
# Usage: benchmarks/gpu_check.sh [OUTPUT_FOLDER]   (default: $OUT, else ./gpu-figures)
# Writes gpu_check.json and gpu_check.txt there. Without CUDA it says so, writes a note
# and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-./gpu-figures}}"
mkdir -p "$OUTDIR"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    msg="not measured: no CUDA device on this machine ($(hostname))"
    echo "$msg" | tee "$OUTDIR/gpu_check.txt"
    printf '{"measured": false, "note": "%s"}\n' "$msg" > "$OUTDIR/gpu_check.json"
    exit 0
fi

"$PY" -c "import torch; print('gpu:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" \
    | tee "$OUTDIR/gpu_check.txt"
# the synthetic slide (~14 mm, >= 5,000 tissue patches) is generated once, then reused;
# 8,192 patches timed per encoder keeps the whole run within the 5-minute budget
timeout 270 "$PY" benchmarks/embed_throughput.py \
    --devices cuda --encoders resnet50_trunc,uni --batch-size 256 --max-patches 8192 \
    --workdir "${TMPDIR:-/tmp}/ghanet-bench" --json "$OUTDIR/gpu_check.json" \
    2>&1 | tee -a "$OUTDIR/gpu_check.txt"
rc=${PIPESTATUS[0]}
echo "elapsed $(( $(date +%s) - START )) s, exit $rc" | tee -a "$OUTDIR/gpu_check.txt"
if [ "$rc" -eq 124 ]; then
    echo "timed out: the figures above are partial" | tee -a "$OUTDIR/gpu_check.txt"
fi
if [ "${WHOLE_SLIDE:-1}" != "0" ]; then
    # the slide is built once (1.2 GB in $GHANET_BENCH_DIR), then reused
    GHANET_BENCH_DIR="${GHANET_BENCH_DIR:-${TMPDIR:-/tmp}/ghanet-bench}" timeout 330 \
        "$PY" benchmarks/whole_slide.py --sizes 1 --encoders resnet50 --batch-size 256 \
        --json "$OUTDIR/whole_slide.json" 2>&1 | tee "$OUTDIR/whole_slide.txt"
    ws=${PIPESTATUS[0]}
    echo "whole slide: exit $ws, elapsed $(( $(date +%s) - START )) s" | tee -a "$OUTDIR/whole_slide.txt"
    [ "$rc" -eq 0 ] && rc=$ws
fi
exit "$rc"
