#!/usr/bin/env bash
# Create .venv with everything the tests, benchmarks and CPU runs need, using only python3 + pip.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/dev_setup.sh [--help]

Create .venv in the repository with everything the tests, benchmarks and CPU runs need (the env, train
and dev extras, editable), using only python3 and pip. Re-running it updates .venv in place.

It also installs llama-cpp-python and llama.cpp's converter for the GGUF export
(python -m browser_control.export.llama_cpp_setup): the first time it compiles llama.cpp (needs g++ and
cmake; minutes, 20-40 on two busy cores) and keeps the wheel in ~/.cache/browser-control, so later runs
install it in seconds.

Environment:
  PYTHON_BIN   the Python (>= 3.11) that creates .venv (default: python3)
  TORCH_SPEC   the torch requirement installed first (default: torch==2.13.0)
  SKIP_GGUF=1  skip the llama.cpp part (its tests then skip, or fail where
               BROWSER_CONTROL_REQUIRE_LLAMA_CPP=1)

Then: source .venv/bin/activate, which puts `browser-control`, `tensorboard` and `playwright` on PATH.
EOF
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) echo "dev_setup.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."

PYTHON_BIN="${PYTHON_BIN:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON_BIN" -m venv .venv
fi
# torch first and pinned: an unpinned torch resolves to the newest CUDA build (several GB). 2.13.0 is
# the version the tests are run with; on machines with a local CPU wheel pip takes that.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e '.[env,train,dev]'
# Not in the pip line above: '.[gguf]' would compile llama-cpp-python with its defaults on every new venv.
if [[ "${SKIP_GGUF:-}" != 1 ]]; then
  if command -v g++ >/dev/null || .venv/bin/python -m browser_control.export.llama_cpp_setup --check >/dev/null \
     || compgen -G "${XDG_CACHE_HOME:-$HOME/.cache}/browser-control/llama-cpp-python-*/*.whl" >/dev/null; then
    .venv/bin/python -m browser_control.export.llama_cpp_setup
  else
    echo "note: no C++ compiler, so no GGUF export (its tests skip): 'sudo apt-get install g++ cmake'," \
         "then run this again." >&2
  fi
fi

if ! [[ -x /usr/lib/chromium/chromium-headless-shell || -x /usr/lib/chromium/chromium ]] \
   && [[ -z "${CHROMIUM_EXECUTABLE:-}" ]]; then
  echo "note: no system Chromium found. Either 'sudo apt-get install chromium-headless-shell'" \
       "or '.venv/bin/playwright install chromium' before 'make test'." >&2
fi
echo ".venv ready: $(.venv/bin/python --version), $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
