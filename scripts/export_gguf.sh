#!/usr/bin/env bash
# Exports a checkpoint of the checkpoints volume to GGUF files for llama.cpp, beside its weights.
set -euo pipefail
# shellcheck source=scripts/docker_check.sh
source "$(dirname "${BASH_SOURCE[0]}")/docker_check.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: scripts/export_gguf.sh NAME [--quant Q[,Q...]]

Runs `browser-control checkpoints export /model_checkpoints/NAME --format gguf` in the training container
and writes /model_checkpoints/NAME/gguf/NAME-<QUANT>.gguf in the checkpoints volume, so
'make checkpoint-download NAME=...' brings the files along. A LoRA checkpoint is merged into its base
model first (the base must be in the hf-cache volume, or reachable). No GPU or environment service is
needed; the training image carries llama-cpp-python and llama.cpp's converter.

NAME            a checkpoint in the volume ('make checkpoints' lists them); an unknown one is refused
--quant Q       f16, q8_0, q5_k_m or q4_k_m, several separated by commas, or all (default: q8_0)
-h, --help      this text
EOF_USAGE
}

name=""
have_name=0
quant="q8_0"
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --quant)
      (($# >= 2)) && [[ $2 =~ ^[A-Za-z0-9_,]+$ ]] || die "--quant needs one of f16, q8_0, q5_k_m, q4_k_m or all"
      quant=$2
      shift 2
      ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
      ((have_name == 0)) || die "one checkpoint at a time (got '$name' and '$1')"
      name=$1
      have_name=1
      shift
      ;;
  esac
done

require_docker
require_checkpoint "$name"

echo "exporting checkpoint '$name' to GGUF ($quant) ..." >&2
status=0
compose run --rm --no-deps training browser-control checkpoints export "/model_checkpoints/$name" \
  --format gguf --quant "$quant" || status=$?
if ((status == 0)); then
  echo "GGUF files: /model_checkpoints/$name/gguf/ in the checkpoints volume" \
    "('make checkpoint-download NAME=$name' copies them out with the checkpoint)." >&2
else
  echo "GGUF export failed with exit code $status (its log is above)." >&2
fi
exit "$status"
