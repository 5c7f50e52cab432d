r"""Install what ``checkpoints export --format gguf`` needs: llama-cpp-python and llama.cpp's converter.

Both come from one PyPI file, the llama-cpp-python source distribution: it vendors llama.cpp, whose
library (built here into a wheel: libllama with the quantizer, loaded through ctypes) and whose
``convert_hf_to_gguf.py`` (with its ``conversion/`` package and the gguf-py it is written against) the
export uses. PyPI has no wheel of llama-cpp-python for Linux, so the library is compiled once: a few
minutes on a fast machine, 20-40 on two busy cores. The wheel is kept in a cache directory, so
re-creating a virtual environment (or a CI run on the same machine) installs it in seconds.

Steps, each skipped when already done:
  1. pip download the source distribution into the cache
  2. pip wheel it (CPU only, without the multimodal library and llama.cpp's tools) into the cache
  3. pip install the wheel into this Python's environment
  4. copy the converter out of the source distribution into <prefix>/share/browser-control/

Examples:
  python -m browser_control.export.llama_cpp_setup            # everything (needs cmake-able C/C++ compiler)
  python -m browser_control.export.llama_cpp_setup --check    # what is there, changes nothing
  CMAKE_ARGS=-DGGML_NATIVE=ON python -m browser_control.export.llama_cpp_setup --rebuild   # tuned to this CPU
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# The release whose vendored llama.cpp converts LFM2 and whose ctypes bindings match its library. Keep in
# step with the `gguf` extra in pyproject.toml (tests/test_gguf_export.py checks that they agree).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# Portable (GGML_NATIVE=OFF: x86-64 with AVX2, not this exact CPU, so a cached wheel survives a move to
# another machine) and small: no CUDA, no multimodal library, no llama.cpp tools or tests, no TLS.
CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF "
    "-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
)
# What the export runs from the source distribution, relative to vendor/llama.cpp/.
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE")


class SetupError(RuntimeError):
    """A step failed; the message says which and what to do."""


def cache_dir() -> Path:
    root = (
        os.environ.get("BROWSER_CONTROL_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "browser-control"
    )
    return Path(root) / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"


def default_converter_dir() -> Path:
    return Path(sys.prefix) / "share" / "browser-control" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None


def _sdist(cache: Path) -> Path | None:
    found = sorted(cache.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"))
    return found[0] if found else None


def _wheel(cache: Path) -> Path | None:
    found = sorted(cache.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}-*.whl"))
    return found[0] if found else None


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        raise SetupError(f"'{' '.join(cmd)}' failed (its output is above)")


def download(cache: Path) -> Path:
    sdist = _sdist(cache)
    if sdist is None:
        _pip(
            "download",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--quiet",
            "-d",
            str(cache),
        )
        sdist = _sdist(cache)
        if sdist is None:
            raise SetupError(f"pip download left no llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz in {cache}")
    return sdist


def build(cache: Path, sdist: Path, jobs: int) -> Path:
    """Compile the wheel into a temporary directory and move it into the cache once it is complete."""
    if shutil.which("c++") is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        raise SetupError("no C++ compiler: install one (Debian/Ubuntu: apt-get install g++ cmake) and run again")
    env = dict(os.environ)
    env["CMAKE_ARGS"] = f"{CMAKE_ARGS} {env.get('CMAKE_ARGS', '')}".strip()  # the caller's flags win
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(jobs))
    print(
        f"building llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (llama.cpp, CPU) with {jobs} jobs: "
        "minutes on a fast machine, 20-40 on two busy cores ...",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".tmp-wheel-", dir=cache) as tmp:
        _pip("wheel", "--no-deps", "-w", tmp, str(sdist), env=env)
        built = sorted(Path(tmp).glob("llama_cpp_python-*.whl"))
        if not built:
            raise SetupError("pip wheel finished without a wheel")
        target = cache / built[0].name
        os.replace(built[0], target)
    print(f"built {target.name} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return target


def extract_converter(sdist: Path, target: Path) -> None:
    """Copy vendor/llama.cpp's converter files out of the source distribution, whole or not at all."""
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=target.parent) as tmp, tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix)
            and m.name[len(prefix) :].split("/")[0] in CONVERTER_FILES
            and (m.isfile() or m.isdir())
        ]
        for member in members:
            member.name = member.name[len(prefix) :]
        tar.extractall(tmp, members=members, filter="data")
        if not (Path(tmp) / "convert_hf_to_gguf.py").is_file():
            raise SetupError(f"{sdist} has no {prefix}convert_hf_to_gguf.py")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        Path(tmp).mkdir()  # TemporaryDirectory removes it on exit


def status(converter: Path) -> list[str]:
    cache = cache_dir()
    return [
        f"llama-cpp-python installed: {installed_version() or 'no'} (wanted {LLAMA_CPP_PYTHON_VERSION})",
        f"cached wheel: {_wheel(cache) or 'none'}",
        f"cached source distribution: {_sdist(cache) or 'none'}",
        f"converter: {converter if (converter / 'convert_hf_to_gguf.py').is_file() else 'missing'} ({converter})",
    ]


def setup(rebuild: bool = False, jobs: int | None = None) -> Path:
    """Make llama-cpp-python and the converter available; returns the converter's directory."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    sdist = download(cache)
    wheel = _wheel(cache)
    if rebuild and wheel is not None:
        wheel.unlink()
        wheel = None
    if wheel is None:
        wheel = build(cache, sdist, jobs or os.cpu_count() or 2)
    if rebuild or installed_version() != LLAMA_CPP_PYTHON_VERSION:
        _pip("install", "--quiet", "--force-reinstall", "--no-deps", str(wheel))
        # its few pure-Python dependencies (numpy, jinja2, diskcache, typing-extensions)
        _pip("install", "--quiet", str(wheel))
    converter = default_converter_dir()
    if not (converter / "convert_hf_to_gguf.py").is_file() or rebuild:
        extract_converter(sdist, converter)
    return converter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m browser_control.export.llama_cpp_setup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="say what is installed and cached; change nothing")
    parser.add_argument("--rebuild", action="store_true", help="compile the wheel again (e.g. with other CMAKE_ARGS)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs [number of CPUs]")
    args = parser.parse_args(argv)
    if args.check:
        print("\n".join(status(default_converter_dir())))
        ready = (
            installed_version() == LLAMA_CPP_PYTHON_VERSION
            and (default_converter_dir() / "convert_hf_to_gguf.py").is_file()
        )
        return 0 if ready else 1
    try:
        converter = setup(args.rebuild, args.jobs)
    except SetupError as exc:
        print(f"llama_cpp_setup: error: {exc}", file=sys.stderr)
        return 1
    print(f"GGUF export ready: llama-cpp-python {installed_version()}, converter in {converter}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
