#!/usr/bin/env bash
# Run benchmarks/learning_curve.py on the GPU machine in the background and bring its results back in
# pieces, so that a run longer than one device call (at most 10 minutes) survives, and one whose device
# time ends before its evaluation can be evaluated here with --evaluate-only.
#
#   bash benchmarks/gpu_learning_run.sh start [SECONDS] -- ARGS...  # there, after gpu_stage.sh install:
#                                    # starts learning_curve.py ARGS (--out is /tmp/lc), polls after SECONDS
#   bash benchmarks/gpu_learning_run.sh poll                # there, in the next calls (sleep first)
#   bash benchmarks/gpu_learning_run.sh unpack DIR PATH...  # here: the returned files into DIR (DIR/lc)
#   (LEARNING_RUN_DIR, default /tmp/lc, moves the run and names the folder the archives hold)
#   python benchmarks/learning_curve.py --evaluate-only --out DIR/lc --device cpu ...  # here, if needed
#
# `poll` prints the run's progress and writes $OUT/results.tgz (logs, demonstrations, training.json,
# learning_curve.json and chart once there) and $OUT/ckpt.tgz.NN (the SFT and GRPO checkpoints without
# optimizer state, in pieces of 15 MB: one file back may hold 16 MiB). Give the device calls back to back:
# the machine, and the run on it, is gone 30 s after a call ends.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${LEARNING_RUN_DIR:-/tmp/lc}  # the tests point it elsewhere
PARENT=$(dirname "$RUN")
NAME=$(basename "$RUN")

# tar of a running run: its logs grow while they are read. GNU tar then exits 1 ("file changed as we read
# it") with the archive complete up to that moment, which is what a poll wants; 2 and above are real errors.
snapshot() {
    local status=0
    tar --warning=no-file-changed "$@" || status=$?
    [ "$status" -le 1 ] || return "$status"
}

poll() {
    tail -c 1500 "$RUN/run.log" 2>/dev/null || true
    echo
    ls "$RUN"/checkpoints/runs/* 2>/dev/null || true
    [ -f "$RUN/rc" ] && echo "finished: exit status $(cat "$RUN/rc")"
    uptime
    : "${OUT:?OUT must name the folder whose files come back from the device machine}"
    snapshot -czf "$OUT/results.tgz" -C "$PARENT" --exclude="$NAME/checkpoints" --exclude="$NAME/tiny-lfm2" "$NAME"
    rm -f "$OUT"/ckpt.tgz.*
    if [ -d "$RUN/checkpoints" ]; then
        snapshot -czf "$PARENT/ckpt.tgz" -C "$PARENT" --exclude=optimizer.pt --exclude='rng_state*' \
            --exclude=scheduler.pt "$NAME/checkpoints"
        split -b 15M -d "$PARENT/ckpt.tgz" "$OUT/ckpt.tgz."
        rm -f "$PARENT/ckpt.tgz"
    fi
    ls -la "$OUT"
}

case "${1:-}" in
    start)
        shift
        wait_s=240
        if [ "${1:-}" != "--" ]; then wait_s=$1; shift; fi
        if [ "${1:-}" != "--" ] || [[ ! $wait_s =~ ^[0-9]+$ ]]; then
            echo "usage: $0 start [SECONDS] -- LEARNING_CURVE_ARGS..." >&2
            exit 2
        fi
        shift
        rm -rf "$RUN" && mkdir -p "$RUN"
        printf '%q ' python3 benchmarks/learning_curve.py --out "$RUN" "$@" > "$RUN/command.txt"
        # setsid: the run outlives this call; its exit status lands in rc.
        OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} setsid nohup bash -c \
            "$(cat "$RUN/command.txt") > $RUN/run.log 2>&1; echo \$? > $RUN/rc" > /dev/null 2>&1 &
        sleep "$wait_s"
        poll
        ;;
    poll) poll ;;
    unpack)
        [ $# -ge 3 ] || { echo "usage: $0 unpack DIR RESULTS_TGZ [CKPT_PIECES...]" >&2; exit 2; }
        dir=$2; results=$3; shift 3
        mkdir -p "$dir"
        tar xzf "$results" -C "$dir"
        if [ $# -gt 0 ]; then cat "$@" | tar xz -C "$dir"; fi
        ls "$dir/lc"
        ;;
    *)
        sed -n '2,16p' "$0"
        exit 2
        ;;
esac
