#!/usr/bin/env bash
# Evaluates a checkpoint from the checkpoints volume against the compose environment service and stores
# the report beside the checkpoint's weights.
set -euo pipefail
# shellcheck source=scripts/docker_check.sh
source "$(dirname "${BASH_SOURCE[0]}")/docker_check.sh"

usage() {
  cat <<'EOF'
Usage: scripts/evaluate.sh NAME [--suite SUITE] [--episodes N] [--screenshots]

Runs `browser-control evaluate --model /model_checkpoints/NAME` in the training container against the
environment service of docker/compose.yaml (started and health-checked first) and writes the report to
/model_checkpoints/NAME/eval/ in the checkpoints volume, so 'make checkpoint-download' brings it along.

NAME            a checkpoint in the volume ('make checkpoints' lists them); an unknown one is refused
--suite SUITE   the task suite (default: the evaluator's)
--episodes N    episodes per task (default: the evaluator's)
--screenshots   keep a screenshot of every step in the recording ('make view' shows them); (re)starts the
                environment service with screenshots on (BROWSERGYM_SCREENSHOTS=1)
-h, --help      this text
EOF
}

name=""
have_name=0
extra=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --suite)
      (($# >= 2)) && [[ -n $2 ]] || die "--suite needs a suite name"
      extra+=(--suite "$2")
      shift 2
      ;;
    --episodes)
      (($# >= 2)) && [[ $2 =~ ^[1-9][0-9]*$ ]] || die "--episodes needs a positive whole number"
      extra+=(--episodes "$2")
      shift 2
      ;;
    --screenshots)
      extra+=(--screenshots)
      export BROWSERGYM_SCREENSHOTS=1
      shift
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
start_browsergym

echo "evaluating checkpoint '$name' ..." >&2
status=0
compose run --rm training browser-control evaluate --model "/model_checkpoints/$name" "${extra[@]}" \
  --output "/model_checkpoints/$name/eval" || status=$?
if ((status == 0)); then
  echo "report: /model_checkpoints/$name/eval/ in the checkpoints volume" \
    "('make checkpoint-download NAME=$name' copies it out with the checkpoint; 'make view' shows its episodes)." >&2
else
  echo "evaluation failed with exit code $status (its log is above)." >&2
fi
exit "$status"
