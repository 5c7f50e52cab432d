#!/usr/bin/env bash
# Fine-tunes with docker/compose.yaml: builds the images, starts the environment service, waits for its
# health check, runs the trainer in the foreground and exits with the trainer's exit code.
set -euo pipefail
# shellcheck source=scripts/docker_check.sh
source "$(dirname "${BASH_SOURCE[0]}")/docker_check.sh"

usage() {
  cat <<'EOF'
Usage: scripts/train.sh [--config NAME] [--no-build] [--gpus N] [--env-replicas N]

Trains on this machine's GPUs with Docker Compose (docker/compose.yaml):
  1. builds the browsergym and training images (a no-op when they are current),
  2. starts the environment service and waits until /health answers,
  3. runs `browser-control train --config configs/NAME` in the training container, streaming its log,
  4. exits with the trainer's exit code. The environment service keeps running for `make evaluate`;
     `make docker-down` stops it.

Options:
  --config NAME  a file under configs/ (default: $CONFIG, else lfm2_350m_local.yaml)
  --no-build     use the images as they are (e.g. offline after a first build)
  --gpus N       train with N processes, one per GPU, under accelerate launch (data parallel; the
                 config's num_processes otherwise). Every GPU plays its own rollouts.
  --env-replicas N
                 run N environment-service replicas (compose --scale browsergym=N) and spread the
                 rollouts' browser sessions over them; host ports BROWSERGYM_PORT..+N-1 (docs/scaling.md)
  -h, --help     this text

Checkpoints go to the checkpoints volume (make checkpoints), logs to the logs volume (make tensorboard),
model downloads to the hf-cache volume (set HF_HUB_OFFLINE=1 once the model is cached).
EOF
}

config="${CONFIG:-lfm2_350m_local.yaml}"
build=1
gpus=""
replicas=1
number() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 needs a whole number >= 1, got '$2'"; }
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --config)
      (($# >= 2)) || die "--config needs a file name under configs/"
      config=$2
      shift 2
      ;;
    --config=*) config=${1#--config=}; shift ;;
    --no-build) build=0; shift ;;
    --gpus | --env-replicas)
      (($# >= 2)) || die "$1 needs a number"
      number "$1" "$2"
      if [[ $1 == --gpus ]]; then gpus=$2; else replicas=$2; fi
      shift 2
      ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

require_docker

# configs/ is mounted into the container, so what exists here is what the trainer will find.
config=${config#configs/}
if [[ -z $config || $config == */* || ! -f "$BC_ROOT/configs/$config" ]]; then
  available=$(find "$BC_ROOT/configs" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) -printf '  %f\n' \
    2>/dev/null | LC_ALL=C sort || true)
  die "no config '$config' in configs/. Available:"$'\n'"${available:-  (none)}"
fi
export CONFIG=$config

if ((build)); then
  echo "building the images (cached layers make this quick after the first time) ..." >&2
  compose build browsergym training
else
  for image in "$BC_BROWSERGYM_IMAGE" "$BC_TRAINING_IMAGE"; do
    image_exists "$image" || die "--no-build, but the image $image is missing: build once without --no-build."
  done
fi

start_browsergym "$replicas"

run_env=()
if [[ -n $gpus ]]; then
  run_env+=(-e "NUM_PROCESSES=$gpus")
fi
if ((replicas > 1)); then
  # Compose names the replicas <project>-browsergym-<i>; each name resolves to one container, and a
  # session must stay on the replica that created it, so the trainer gets the list, not the shared name.
  urls=""
  for ((i = 1; i <= replicas; i++)); do
    urls+="${urls:+,}http://browser-control-browsergym-$i:8000"
  done
  run_env+=(-e "BROWSERGYM_URL=$urls")
fi

echo "training with configs/$config${gpus:+ on $gpus GPUs}, $replicas environment replica(s) ..." >&2
status=0
compose run --rm "${run_env[@]}" training || status=$?
if ((status == 0)); then
  echo "training finished: 'make checkpoints' lists the checkpoints, 'make tensorboard' shows the logs." >&2
else
  echo "training failed with exit code $status (its log is above)." >&2
fi
exit "$status"
