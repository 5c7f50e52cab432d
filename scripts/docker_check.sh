#!/usr/bin/env bash
# Checks that Docker can run this project's stack: the docker CLI, a reachable engine and Compose v2.
# Run it to check; the other docker scripts source it for the same checks and the shared helpers.
set -euo pipefail
# The helpers run inside $(...); without this, errors there would not stop them.
shopt -s inherit_errexit

BC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BC_COMPOSE_FILE="$BC_ROOT/docker/compose.yaml"
# Must equal the image: names in docker/compose.yaml (a test checks it).
BC_BROWSERGYM_IMAGE="browser-control/browsergym:local"
BC_TRAINING_IMAGE="browser-control/training:local"

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Prints what keeps Docker from working here, or nothing when it works.
docker_problem() {
  if ! command -v docker >/dev/null 2>&1; then
    echo "docker is not installed (no 'docker' on PATH). Install Docker Engine with the Compose plugin:" \
      "https://docs.docker.com/engine/install/ (and the NVIDIA Container Toolkit for training)."
    return 0
  fi
  local out
  # A timeout because a wedged engine can leave `docker info` waiting for minutes.
  if ! out=$(timeout 30 docker info --format '{{.ServerVersion}}' 2>&1); then
    local last="${out##*$'\n'}"
    if [[ $last == *"permission denied"* ]]; then
      echo "the Docker engine refused this user (${last})." \
        "Add yourself to the docker group (sudo usermod -aG docker \$USER) and log in again."
    else
      echo "the Docker engine is not reachable (${last:-docker info failed})." \
        "Start it (sudo systemctl start docker) and try again."
    fi
    return 0
  fi
  if ! docker compose version >/dev/null 2>&1; then
    echo "the Docker Compose v2 plugin is missing ('docker compose' does not work):" \
      "install docker-compose-plugin (Compose v2.20 or newer)."
  fi
}

require_docker() {
  local problem
  problem=$(docker_problem)
  [[ -z $problem ]] || die "$problem"
}

compose() {
  docker compose -f "$BC_COMPOSE_FILE" "$@"
}

image_exists() {
  docker image inspect "$1" >/dev/null 2>&1
}

# Starts the environment service (building its image when missing) and waits until /health answers.
# With a number N > 1, starts N replicas (BROWSERGYM_REPLICAS, read by compose.yaml, so that a later
# `compose run training` keeps them); each publishes one port of BROWSERGYM_PORT..+N-1 on loopback.
start_browsergym() {
  local replicas=${1:-1}
  image_exists "$BC_BROWSERGYM_IMAGE" || compose build browsergym
  if ((replicas > 1)); then
    local first=${BROWSERGYM_PORT:-8000}
    first=${first%%-*}
    export BROWSERGYM_REPLICAS=$replicas BROWSERGYM_PORT="$first-$((first + replicas - 1))"
  fi
  echo "starting the environment service ($replicas replica(s)) and waiting for its health check ..." >&2
  if ! compose up --detach --wait --wait-timeout 300 browsergym; then
    compose logs --tail 80 browsergym >&2 || true
    die "the environment service did not become healthy (its log is above); see README.md, Troubleshooting."
  fi
}

# One line per complete checkpoint in the checkpoints volume: name, bytes, last change (UTC), tab-separated.
# Checkpoints are written to a .tmp-* folder and renamed when complete, so dot-folders are skipped; runs/
# holds the trainer's intermediate checkpoints (RUNS_SUBDIR in browser_control.training.checkpoints).
list_checkpoints() {
  image_exists "$BC_TRAINING_IMAGE" \
    || die "the training image $BC_TRAINING_IMAGE is not built, so no checkpoint can exist yet:" \
      "run 'make fine-tune-local' (or 'make docker-build') first."
  # shellcheck disable=SC2016 # expanded by the container's shell
  compose run --rm --no-deps -T training sh -c '
    cd "$CHECKPOINT_DIR" || exit 3
    find . -mindepth 1 -maxdepth 1 -type d ! -name ".*" ! -name runs -printf "%f\n" | LC_ALL=C sort | while IFS= read -r name; do
      printf "%s\t%s\t%s\n" "$name" "$(du -sb -- "$name" | cut -f1)" "$(date -u -r "$name" "+%Y-%m-%d %H:%M")"
    done' || die "could not list the checkpoints volume (the error is above)."
}

# Refuses a checkpoint name that is missing, malformed or not in the volume, listing the ones there are.
require_checkpoint() {
  local name=$1 names
  names=$(list_checkpoints | cut -f1 | sed '/^$/d')
  if [[ -z $names ]]; then
    die "there are no checkpoints in the volume yet: train one with 'make fine-tune-local'."
  fi
  local available
  available="  ${names//$'\n'/$'\n'  }"
  if [[ -z $name ]]; then
    die "name a checkpoint (NAME=... for make). Available:"$'\n'"$available"
  fi
  if ! [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
    die "'$name' is not a checkpoint name (letters, digits, '.', '_' and '-'). Available:"$'\n'"$available"
  fi
  if ! grep -qxF -- "$name" <<<"$names"; then
    die "unknown checkpoint '$name'. Available:"$'\n'"$available"
  fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  case "${1:-}" in
    -h | --help)
      cat <<'EOF'
Usage: scripts/docker_check.sh

Checks that Docker can run this project's stack: the docker CLI is installed, the engine answers
and the Compose v2 plugin works. Exits 0 when all hold, else 1 with what to do.
For the GPU side (driver, CUDA, NVIDIA Container Toolkit, disk) run scripts/verify_gpu.sh.
EOF
      exit 0
      ;;
    "") ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  require_docker
  echo "docker ok: engine $(docker info --format '{{.ServerVersion}}'), $(docker compose version --short 2>/dev/null || echo compose)"
fi
