#!/usr/bin/env bash
# Adversarial fine-tuning of the distilled StyleGAN2 face model (issue 6) on a CUDA GPU: several
# configurations side by side, each exported as snapshot averages that are then chosen on the CPU
# (labelers) with tools/eval_stylegan2_faces.py, exactly as for the CPU runs.
#
#   bash tools/gpu_distill.sh start INIT_RUN MINUTES   # launch every configuration below, in the background
#   bash tools/gpu_distill.sh wait                     # wait until they have stopped (after MINUTES each)
#   bash tools/gpu_distill.sh pack OUT                 # export snapshot averages; tar them and the logs into OUT
#
# INIT_RUN is a run folder whose checkpoint.pt holds G, G_ema and the hint heads (the shipped model
# starts from runs/stylegan2_faces/main1, 284 kimg of paired regression). Runs go to $DISTILL_RUNS
# (default /tmp/gpu_distill); $DISTILL_DEVICE (default cuda); $DISTILL_EXTRA: options added to every
# run (they override the ones below); $PYTHON as in bench/gpu_check.sh.
# The generator's CUDA ops are not used for training (STYLEGAN_OPS_REFERENCE=1): training then runs
# the same code path as the CPU runs did, and it does not wait for (or depend on) the kernel build.
# Pack writes OUT/distill_logs.tar (config, log.jsonl, stdout of each run) and OUT/candidates_K.tar
# (at most 4 exported generators of ~3.2 MB each per tar, so each file stays under 16 MB).
set -u
cd "$(dirname "$0")/.."
RUNS="${DISTILL_RUNS:-/tmp/gpu_distill}"
DEV="${DISTILL_DEVICE:-cuda}"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# The recipe of the shipped CPU run (runs/stylegan2_faces/adv3), plus larger batches and longer EMA.
COMMON="--kimg 100000 --threads 2 --tick-kimg 1 --eval-kimg 5 --betas 0.9 0.99 --map-lr-mult 1
        --hint-res 4 8 16 32 --hint 10 --lpips 1 --r1-gamma 0.1 --d-arch patch --d-channel-base 2048"
CONFIGS=(
    "g1 --batch 8 --lr-g 0.005 --adv 0.05 --ema-kimg 5 --seed 11"
    "g2 --batch 32 --lr-g 0.005 --adv 0.05 --ema-kimg 10 --seed 12"
    "g3 --batch 32 --lr-g 0.002 --adv 0.05 --ema-kimg 10 --seed 13"
    "g4 --batch 32 --lr-g 0.005 --adv 0.03 --ema-kimg 10 --seed 14"
)

start() {
    local init="$1" minutes="$2"
    [ -f "$init/checkpoint.pt" ] || { echo "no checkpoint.pt in $init" >&2; return 2; }
    mkdir -p "$RUNS"
    for c in "${CONFIGS[@]}"; do
        set -- $c
        local name="$1"; shift
        # shellcheck disable=SC2086
        STYLEGAN_OPS_REFERENCE=1 nohup "$PY" tools/distill_stylegan2_faces.py train --run "$RUNS/$name" \
            --init-from "$init" --device "$DEV" --minutes "$minutes" $COMMON "$@" ${DISTILL_EXTRA:-} > "$RUNS/$name.out" 2>&1 &
        echo $! > "$RUNS/$name.pid"
        echo "started $name (pid $!)"
    done
}

wait_all() {
    local pid
    for f in "$RUNS"/*.pid; do
        [ -f "$f" ] || continue
        pid="$(cat "$f")"
        while kill -0 "$pid" 2>/dev/null; do sleep 2; done
        echo "$(basename "$f" .pid) stopped: $(tail -n 1 "${f%.pid}.out")"
    done
}

# windows NAME: print "label kimg..." lines: the second half, the last quarter and the last 60% of
# the snapshots of run NAME (kimg of its snapshots, sorted)
windows() {
    "$PY" - "$RUNS/$1/snapshots" <<'EOF'
import sys
from pathlib import Path
ks = sorted(int(p.stem.split("_")[1]) for p in Path(sys.argv[1]).glob("ema_*.pt"))
ks = [k for k in ks if k > 0]
if not ks:
    sys.exit(0)
top = ks[-1]
seen = set()
for label, frac in (("h2", 0.5), ("q4", 0.75), ("l60", 0.4)):
    sel = [k for k in ks if k > frac * top] or ks[-1:]
    if tuple(sel) not in seen:
        seen.add(tuple(sel))
        print(label, *sel)
EOF
}

pack() {
    local out="$1"
    mkdir -p "$out" "$RUNS/candidates"
    local pids=()
    for c in "${CONFIGS[@]}"; do
        set -- $c
        local name="$1"
        [ -d "$RUNS/$name/snapshots" ] || continue
        while read -r label ks; do
            [ -n "$label" ] || continue
            # shellcheck disable=SC2086
            "$PY" tools/distill_stylegan2_faces.py export --run "$RUNS/$name" --average $ks \
                --out "$RUNS/candidates/${name}_${label}.pt" > "$RUNS/candidates/${name}_${label}.log" 2>&1 &
            pids+=($!)
        done < <(windows "$name")
    done
    for p in "${pids[@]}"; do wait "$p"; done
    (cd "$RUNS" && tar cf "$out/distill_logs.tar" --exclude='*/checkpoint.pt' --exclude='*/snapshots' \
        ./*.out ./*/config.json ./*/log.jsonl candidates/*.log)
    local i=0 batch=()
    for f in "$RUNS"/candidates/*.pt; do
        [ -f "$f" ] || continue
        batch+=("$(basename "$f")")
        if [ "${#batch[@]}" -eq 4 ]; then
            i=$((i + 1)); (cd "$RUNS/candidates" && tar cf "$out/candidates_$i.tar" "${batch[@]}"); batch=()
        fi
    done
    if [ "${#batch[@]}" -gt 0 ]; then
        i=$((i + 1)); (cd "$RUNS/candidates" && tar cf "$out/candidates_$i.tar" "${batch[@]}")
    fi
    ls -la "$out"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    wait) wait_all ;;
    pack) shift; pack "$@" ;;
    *) echo "usage: $0 start INIT_RUN MINUTES | wait | pack OUT" >&2; exit 2 ;;
esac
