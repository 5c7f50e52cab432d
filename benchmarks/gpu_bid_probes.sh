#!/usr/bin/env bash
# Run a grid of benchmarks/bid_probe.py probes side by side on the GPU machine in one device call: a probe
# needs only the package's imports (pydantic, and TRL for the chat template, travel as wheels; torch and
# transformers are the machine's) and a demonstrations file, so one call stages and runs the grid.
#
#   bash benchmarks/gpu_bid_probes.sh prepare DEMOS.jsonl   # here: .stage/probe (wheels + gzipped demos)
#   bash benchmarks/gpu_bid_probes.sh run GRID SECONDS      # there (carry .stage/probe): every line of GRID
#       ("NAME bid_probe.py arguments", # comments) as its own process on the GPU, each stopped after
#       SECONDS of training (and killed SECONDS + PROBE_SETUP_S, default 120, after its start);
#       $OUT/probes.tgz holds NAME.jsonl and NAME.err of each, the last lines print
#
# Each probe is one CPU thread, so a 16-core machine runs up to ~14 side by side. Files back from a call
# are limited in number, hence the one archive.
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE=.stage/probe
SETUP_S=${PROBE_SETUP_S:-120}  # per probe, beyond SECONDS: loading, building the model, the start
# shellcheck source=benchmarks/gpu_wheels.sh
source benchmarks/gpu_wheels.sh  # WHEELS: the pins gpu_stage.sh stages too
# What a probe imports that the machine lacks; the versions are WHEELS'.
PROBE_PACKAGES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions trl datasets dill
                multiprocess)

pinned() {
    local name spec
    for name in "${PROBE_PACKAGES[@]}"; do
        for spec in "${WHEELS[@]}"; do [[ $spec == "$name=="* ]] && echo "$spec"; done
    done
}

prepare() {
    local demos=${1:?usage: $0 prepare DEMOS.jsonl}
    [ -f "$demos" ] || { echo "$demos: no such demonstrations file" >&2; exit 2; }
    local specs
    mapfile -t specs < <(pinned)
    if [ "${#specs[@]}" -ne "${#PROBE_PACKAGES[@]}" ]; then
        echo "gpu_wheels.sh pins ${specs[*]}, not all of ${PROBE_PACKAGES[*]}" >&2; exit 2
    fi
    rm -rf "$STAGE" && mkdir -p "$STAGE/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$STAGE/wheels" "${specs[@]}"
    gzip -c "$demos" > "$STAGE/demos.jsonl.gz"
    du -sh "$STAGE"
}

run() {
    local grid=${1:?usage: $0 run GRID SECONDS} seconds=${2:?usage: $0 run GRID SECONDS}
    [[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: $0 run GRID SECONDS (a whole number)" >&2; exit 2; }
    [ -f "$grid" ] || { echo "$grid: no such grid file" >&2; exit 2; }
    : "${OUT:?OUT must name the folder whose files come back from the device machine}"
    local work=${BID_PROBES_DIR:-/tmp/bid-probes}  # the tests point it elsewhere
    rm -rf "$work" && mkdir -p "$work/lines"
    if compgen -G "$STAGE/wheels/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$work/site" "$STAGE"/wheels/*.whl
    fi
    export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
    gunzip -c "$STAGE/demos.jsonl.gz" > "$work/demos.jsonl"
    local name args pids=()
    while read -r name args; do
        [[ -z "$name" || "$name" == \#* ]] && continue
        # The deadline counts training only: building a large model and its start took 260 s of the first
        # grid's call, which then ran out. timeout bounds the whole probe; its lines so far stay.
        # shellcheck disable=SC2086  # the grid's arguments are words
        timeout "$((seconds + SETUP_S))" python3 benchmarks/bid_probe.py --demos "$work/demos.jsonl" \
            --device cuda --deadline-s "$seconds" --work "$work/models/$name" $args \
            > "$work/lines/$name.jsonl" 2> "$work/lines/$name.err" &
        pids+=("$!")
    done < "$grid"
    local failed=0 pid
    for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done  # 124: stopped by timeout
    tar -czf "$OUT/probes.tgz" -C "$work" lines
    for name in "$work"/lines/*.jsonl; do
        echo "== $(basename "$name" .jsonl): $(tail -n 1 "$name" | cut -c 1-160)"
    done
    echo "$failed of ${#pids[@]} probes failed"
    [ "$failed" -eq 0 ]
}

case "${1:-}" in
    prepare) prepare "${2:-}" ;;
    run) run "${2:-}" "${3:-}" ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac
