"""Process settings vLLM needs before its engine starts, shared by training (colocate) and evaluation.

- flashinfer: vLLM's default sampler is flashinfer's. The training image ships flashinfer; a pip install
  of vLLM on a user's machine may not, and then the engine fails while setting up sampling. Without
  flashinfer the product selects vLLM's PyTorch sampler (``VLLM_USE_FLASHINFER_SAMPLER=0``), which samples
  the same distribution; it was the sampler of every GPU number in benchmarks/RESULTS.md.
- spawn: a standalone engine (``evaluate --backend vllm``) runs in a child process; forked after this
  process touched CUDA, the child fails with "Cannot re-initialize CUDA in forked subprocess".

A value the user exported is always kept.
"""

from __future__ import annotations

import importlib.util
import logging
import os

log = logging.getLogger(__name__)


def prepare_vllm_environment() -> dict[str, str]:
    """Set the variables above where unset; returns what was set."""
    chosen: dict[str, str] = {}
    if "VLLM_USE_FLASHINFER_SAMPLER" not in os.environ and importlib.util.find_spec("flashinfer") is None:
        chosen["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
    if "VLLM_WORKER_MULTIPROC_METHOD" not in os.environ:
        chosen["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
    os.environ.update(chosen)
    if "VLLM_USE_FLASHINFER_SAMPLER" in chosen:
        log.info("flashinfer is not installed: vLLM samples with its PyTorch sampler (VLLM_USE_FLASHINFER_SAMPLER=0)")
    return chosen
