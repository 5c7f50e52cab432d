#!/usr/bin/env bash
# Checks that this machine can run the training container: NVIDIA driver, CUDA version, compute
# capability, Docker, GPU access from containers (NVIDIA Container Toolkit) and free disk.
set -euo pipefail
# shellcheck source=scripts/docker_check.sh
source "$(dirname "${BASH_SOURCE[0]}")/docker_check.sh"

# The training image is built on CUDA 13 (vllm/vllm-openai >= v0.20), which needs an R580 driver or newer.
MIN_DRIVER_MAJOR=580
MIN_CUDA_MAJOR=13
# bf16 training and vLLM's kernels need Ampere (8.0) or newer.
MIN_COMPUTE_CAP=8.0
# The training image (CUDA, torch, vLLM) is the bulk; the model cache and checkpoints need a few GB more.
min_free_gb=${MIN_FREE_GB:-60}
# Used to test the toolkit when the training image is not built yet (pulled on first use).
probe_image=${VERIFY_GPU_IMAGE:-ubuntu:24.04}

usage() {
  cat <<EOF
Usage: scripts/verify_gpu.sh [--min-free-gb N]

Checks, in order, and prints ok/FAIL for each:
  driver      nvidia-smi answers; driver >= $MIN_DRIVER_MAJOR (the CUDA $MIN_CUDA_MAJOR training image needs it)
  cuda        the driver supports CUDA >= $MIN_CUDA_MAJOR
  gpu N       name, memory and compute capability >= $MIN_COMPUTE_CAP (GB10 reports 12.1)
  docker      docker CLI, a running engine and Compose v2
  container   a container sees the GPUs through the NVIDIA Container Toolkit (the training image,
              or $probe_image when that is not built; VERIFY_GPU_IMAGE overrides)
  disk        free space where Docker keeps images and volumes >= N GB (default $min_free_gb, or MIN_FREE_GB)
Exits 0 when every check passes, else 1.
EOF
}

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --min-free-gb)
      (($# >= 2)) && [[ $2 =~ ^[0-9]+$ ]] || die "--min-free-gb needs a whole number of GB"
      min_free_gb=$2
      shift 2
      ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

failures=0
ok() { printf 'ok    %-10s %s\n' "$1" "$2"; }
fail() {
  printf 'FAIL  %-10s %s\n' "$1" "$2"
  failures=$((failures + 1))
}

# version_ge A B: A >= B for dotted numbers.
version_ge() {
  [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]
}

# -- host GPU -------------------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  fail driver "nvidia-smi not found: install the NVIDIA driver (>= $MIN_DRIVER_MAJOR) for your GPU."
elif ! smi=$(nvidia-smi 2>&1); then
  fail driver "nvidia-smi failed: ${smi##*$'\n'}"
else
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')
  if [[ -z $driver ]]; then
    fail driver "nvidia-smi reported no driver version."
  elif version_ge "$driver" "$MIN_DRIVER_MAJOR"; then
    ok driver "$driver"
  else
    fail driver "$driver is older than $MIN_DRIVER_MAJOR: the CUDA $MIN_CUDA_MAJOR training image will not start."
  fi

  cuda=$(grep -oE 'CUDA Version: *[0-9]+(\.[0-9]+)?' <<<"$smi" | grep -oE '[0-9]+(\.[0-9]+)?$' || true)
  if [[ -z $cuda ]]; then
    fail cuda "nvidia-smi does not report a CUDA version."
  elif version_ge "$cuda" "$MIN_CUDA_MAJOR"; then
    ok cuda "$cuda"
  else
    fail cuda "the driver supports CUDA $cuda; the training image needs $MIN_CUDA_MAJOR: update the driver."
  fi

  gpus=$(nvidia-smi --query-gpu=index,name,memory.total,compute_cap --format=csv,noheader 2>/dev/null || true)
  if [[ -z $gpus ]]; then
    fail gpu "nvidia-smi lists no GPU."
  fi
  while IFS=',' read -r index gpu_name memory cap; do
    [[ -n $index ]] || continue
    gpu_name=$(xargs <<<"$gpu_name")
    memory=$(xargs <<<"$memory")
    cap=$(xargs <<<"$cap")
    note=""
    # GB10 (DGX Spark) shares its memory with the CPU: nvidia-smi reports no memory size of its own.
    [[ $memory == *N/A* || $memory == *"Not Supported"* ]] && memory="unified memory"
    [[ $cap == 12.1 ]] && note=" (GB10: sdpa attention, vLLM sleep mode off, low vllm_gpu_memory_utilization)"
    if [[ ! $cap =~ ^[0-9]+\.[0-9]+$ ]]; then
      fail "gpu $index" "$gpu_name: compute capability unknown ('$cap'); the driver may be too old."
    elif version_ge "$cap" "$MIN_COMPUTE_CAP"; then
      ok "gpu $index" "$gpu_name, $memory, compute capability $cap$note"
    else
      fail "gpu $index" "$gpu_name has compute capability $cap; bf16 training needs $MIN_COMPUTE_CAP or newer."
    fi
  done <<<"$gpus"
fi

# -- docker and the container toolkit -------------------------------------------------------------------
docker_root=""
problem=$(docker_problem)
if [[ -n $problem ]]; then
  fail docker "$problem"
  fail container "not checked: Docker is not usable."
else
  ok docker "engine $(docker info --format '{{.ServerVersion}}'), $(docker compose version --short 2>/dev/null)"
  docker_root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || true)
  if image_exists "$BC_TRAINING_IMAGE"; then
    # The compose service itself: proves its GPU reservation works, not just `--gpus`.
    probe=(compose run --rm --no-deps -T training nvidia-smi -L)
    probe_desc="the compose training service"
  else
    probe=(docker run --rm --gpus all "$probe_image" nvidia-smi -L)
    probe_desc="$probe_image with --gpus all"
  fi
  if out=$("${probe[@]}" 2>&1) && grep -q '^GPU ' <<<"$out"; then
    ok container "$(grep -c '^GPU ' <<<"$out") GPU(s) visible in $probe_desc"
  else
    fail container "no GPU visible in $probe_desc (${out##*$'\n'}). Install the NVIDIA Container Toolkit, then \
'sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker'."
  fi
fi

# -- disk ------------------------------------------------------------------------------------------------
disk_path=${docker_root:-/var/lib/docker}
[[ -d $disk_path ]] || disk_path=/
if free_kb=$(df -Pk "$disk_path" 2>/dev/null | awk 'NR == 2 { print $4 }') && [[ $free_kb =~ ^[0-9]+$ ]]; then
  free_gb=$((free_kb / 1024 / 1024))
  if ((free_gb >= min_free_gb)); then
    ok disk "$free_gb GB free at $disk_path"
  else
    fail disk "$free_gb GB free at $disk_path; the images, model cache and checkpoints need about $min_free_gb GB."
  fi
else
  fail disk "could not read the free space at $disk_path."
fi

if ((failures)); then
  echo "$failures check(s) failed." >&2
  exit 1
fi
echo "all checks passed."
