#!/usr/bin/env bash
# Stage the GPU machine for benchmarks/gpu_e2e.py: it has CUDA torch, transformers, peft, accelerate and
# tensorboard, but no vLLM, TRL, Playwright, BrowserGym or Chromium, and no network. Everything travels
# as pieces of at most 60 MB (one device call carries at most 64 MiB with the working tree).
#
#   bash benchmarks/gpu_stage.sh prepare        # here: download, slim, pack, split into .stage/1 .. .stage/N
#   bash benchmarks/gpu_stage.sh prepare --without-vllm   # the same without vLLM (fewer pieces)
#   bash benchmarks/gpu_stage.sh receive        # there, once per piece, in back-to-back calls (carry .stage/K)
#   bash benchmarks/gpu_stage.sh install        # there, after the last piece: join, verify, install
#   source /tmp/stage/env.sh                    # there: PYTHONPATH, Chromium and vLLM settings
#
# Versions: vllm 0.26.0 pins the machine's torch 2.11.0 and sits inside trl 1.16's vLLM range;
# xgrammar 0.2.9 needs apache-tvm-ffi >= 0.1.11 although vllm pins 0.1.10 (installed without the resolver,
# so xgrammar's pair wins); playwright 1.44.0 is browsergym 0.14.3's pin, with greenlet 3.0.3 its own.
# pyarrow is the machine's (25.0.1): with pyarrow 26 under Python 3.12, datasets' fingerprinting of
# Dataset.from_list failed ("Can't pickle <class 'MonthDayNano'>").
set -euo pipefail
cd "$(dirname "$0")/.."

PIECE_BYTES=60000000
WORK=.whl/gpu-stage
STAGE_REMOTE=/tmp/stage

# shellcheck source=benchmarks/gpu_wheels.sh
source benchmarks/gpu_wheels.sh  # WHEELS
# vLLM and what it alone needs; `prepare --without-vllm` leaves them out (transformers generation only:
# the learning benchmark and the environment benchmarks), which saves about half the pieces.
VLLM_WHEELS=(
  vllm==0.26.0 cbor2==6.3.0 pyzmq==27.3.0 openai-harmony==0.0.8 "openai==2.54.0" distro==1.9.0 jiter==0.19.0
  msgspec==0.23.0 pybase64==1.5.1 cachetools==8.0.2 llguidance==1.7.6 xgrammar==0.2.9
  apache-tvm-ffi==0.1.11 blake3==1.0.11 partial-json-parser==0.2.1.1.post7
)
# Files of the vllm wheel that bf16 LFM2-350M on SM90 never loads: the FlashAttention-2 library (vLLM uses
# FA3 on Hopper), the Rust front end, SM100-only headers and the mixture-of-experts kernels (LFM2-350M is
# dense; vLLM imports that library only if present). 304 MB -> ~113 MB, removed in place (no recompression).
VLLM_DROP=("vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so" "vllm/vllm-rs" "vllm/third_party/fmha_sm100/*"
           "vllm/_moe_C_stable_libtorch.abi3.so")
# Debian bookworm's headless shell needs glibc symbols up to 2.35 only; these are the libraries it links
# (ldd) that a CUDA base image may lack, plus fonts so pages lay out as they do elsewhere.
DEBS=(
  chromium-headless-shell chromium-common libasound2 libasyncns0 libatk1.0-0 libatspi2.0-0 libbrotli1
  libdav1d6 libdouble-conversion3 libdrm2 libflac12 libfontconfig1 libfreetype6 libgbm1 libgraphite2-3
  libharfbuzz-subset0 libharfbuzz0b libjpeg62-turbo liblcms2-2 libminizip1 libmp3lame0 libmpg123-0
  libnspr4 libnss3 libogg0 libopenh264-7 libopenjp2-7 libopus0 libpng16-16 libpulse0 libsndfile1
  libvorbis0a libvorbisenc2 libwayland-server0 libx11-6 libx11-xcb1 libxau6 libxcb1 libxcomposite1
  libxdamage1 libxdmcp6 libxext6 libxfixes3 libxi6 libxkbcommon0 libxnvctrl0 libxrandr2 libxrender1
  libexpat1 libdbus-1-3 libsystemd0 libudev1 libbsd0 libmd0 liblz4-1 libgcrypt20 libgpg-error0
  libglib2.0-0 libffi8 libpcre2-8-0 libmount1 libblkid1 libzstd1 zlib1g fontconfig-config fonts-dejavu-core
)

prepare() {
  local wheels=("${WHEELS[@]}")
  [[ "${1:-}" == --without-vllm ]] || wheels+=("${VLLM_WHEELS[@]}")
  rm -rf "$WORK" .stage && mkdir -p "$WORK/wheels" "$WORK/debs" "$WORK/payload"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64 -d "$WORK/wheels" "${wheels[@]}"
  # pip does not check a wheel's RECORD hashes, so the slimmed wheel installs like the original.
  if ls "$WORK"/wheels/vllm-*.whl >/dev/null 2>&1; then
    zip -q -d "$(ls "$WORK"/wheels/vllm-*.whl)" "${VLLM_DROP[@]}"
  fi
  tar -C "$WORK" -cf "$WORK/payload/wheels.tar" wheels
  (cd "$WORK/debs" && apt-get download "${DEBS[@]}" >/dev/null)
  tar -C "$WORK" -cf "$WORK/payload/debs.tar" debs
  tar -C "$WORK/payload" -cf "$WORK/payload.tar" .
  (cd "$WORK" && sha256sum payload.tar > payload.sha256)
  split -b "$PIECE_BYTES" -d -a 2 "$WORK/payload.tar" "$WORK/piece."
  local k=0
  for piece in "$WORK"/piece.*; do
    k=$((k + 1)); mkdir -p ".stage/$k" && mv "$piece" ".stage/$k/"
  done
  cp "$WORK/payload.sha256" ".stage/$k/"
  echo "prepared $k pieces ($(du -sh "$WORK/payload.tar" | cut -f1)); carry .stage/K in call K, each running:"
  echo "  bash benchmarks/gpu_stage.sh receive        (and 'install' in the last one)"
}

receive() {
  mkdir -p "$STAGE_REMOTE"
  local k
  for k in .stage/*/; do cp "$k"* "$STAGE_REMOTE/"; done
  echo "received:" "$STAGE_REMOTE"/piece.*
}

install() {
  cd "$STAGE_REMOTE"
  cat piece.* > payload.tar && sha256sum -c payload.sha256 && rm piece.*
  mkdir -p payload site chromium && tar -C payload -xf payload.tar && rm payload.tar
  tar -C payload -xf payload/wheels.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target site \
    payload/wheels/*.whl
  tar -C payload -xf payload/debs.tar
  for deb in payload/debs/*.deb; do dpkg -x "$deb" chromium; done
  rm -rf payload
  # Only Chromium sees the unpacked Debian libraries: in LD_LIBRARY_PATH they would shadow the machine's
  # own (libffi, libzstd, ...) under Python, torch and vLLM.
  # Bookworm keeps libraries in /lib and /usr/lib, and some in subfolders (pulseaudio/): every folder that
  # holds one goes on the path.
  local libs; libs=$(find "$STAGE_REMOTE/chromium" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)
  cat > chromium-headless-shell <<SH
#!/bin/sh
export LD_LIBRARY_PATH=$libs
export FONTCONFIG_FILE=$STAGE_REMOTE/fonts.conf
exec $STAGE_REMOTE/chromium/usr/lib/chromium/chromium-headless-shell "\$@"
SH
  chmod +x chromium-headless-shell
  # Debian's fonts.conf names /usr/share/fonts; the unpacked fonts live under the staging folder.
  printf '<?xml version="1.0"?>\n<fontconfig><dir>%s</dir><cachedir>%s</cachedir></fontconfig>\n' \
    "$STAGE_REMOTE/chromium/usr/share/fonts" "$STAGE_REMOTE/fontcache" > fonts.conf
  cat > env.sh <<ENV
export PYTHONPATH=$STAGE_REMOTE/site\${PYTHONPATH:+:\$PYTHONPATH}
export PATH=$STAGE_REMOTE/site/bin:\$PATH
export CHROMIUM_EXECUTABLE=$STAGE_REMOTE/chromium-headless-shell
# flashinfer is not staged: vLLM's sampler falls back to its PyTorch implementation.
export VLLM_USE_FLASHINFER_SAMPLER=0
ENV
  echo "installed into $STAGE_REMOTE: source $STAGE_REMOTE/env.sh"
}

case "${1:-}" in
  prepare) prepare "${2:-}" ;;
  receive) receive ;;
  install) install ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
