"""Where a model will be loaded from, decided before anything is loaded: a local directory, the Hugging
Face cache or the Hub.

``from_pretrained`` treats any name that is not an existing directory as a Hub id, and
``checkpoints/run1`` has the shape of one (owner/name). A mistyped local path therefore becomes a
download attempt, and with no network huggingface_hub retries for a minute or more before it says
"check your internet connection". :func:`locate_model` answers at once instead: a name that looks like
a local path and does not exist is reported with the model directories that do exist, and a Hub id
is checked against the cache and one quick reachability probe of the Hub. When the Hub cannot be
reached but the model is cached, offline mode is switched on for this process so the libraries load
the cached copy without retrying.

This module imports neither torch nor transformers: ``train --dry-run`` uses it.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from browser_control.models.files import TMP_PREFIX, adapter_dir, checkpoint_dir

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
# Long enough for a slow but working link, short enough that a missing network costs seconds, not minutes.
PROBE_TIMEOUT_S = 4.0
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_MODEL_FILES = ("config.json", "adapter_config.json")


class ModelNotFound(ValueError):
    """The model cannot be loaded from anywhere; the message says what was looked for and what exists."""


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: Literal["local", "cache", "hub"]
    detail: str  # the directory, the cache snapshot, or the Hub endpoint
    base: ModelSource | None = None  # what a LoRA adapter is applied to

    def describe(self) -> str:
        if self.kind == "local":
            text = f"{self.spec} (local directory {self.detail})"
        elif self.kind == "cache":
            text = f"{self.spec} (Hugging Face cache, {self.detail})"
        else:
            text = f"{self.spec} (from the Hub at {self.detail}; the first use downloads it into the cache)"
        return text + (f", LoRA adapter on {self.base.describe()}" if self.base else "")


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "config.json").is_file() or adapter_dir(path) is not None)


def looks_local(spec: str) -> bool:
    """True when ``spec`` can only mean a path: a Hub id is ``name`` or ``owner/name``, never more.

    ``checkpoints/run1`` is shaped like a Hub id; it counts as local because ``checkpoints`` is a
    directory here (or is CHECKPOINT_DIR), which no Hub owner name is likely to be.
    """
    if spec.startswith(("/", ".", "~")) or "\\" in spec or spec.endswith("/") or spec.count("/") > 1:
        return True
    if "/" not in spec:
        return False
    first = spec.split("/", 1)[0]
    return Path(first).is_dir() or first == checkpoint_dir().name


def _model_dirs(root: Path) -> list[str]:
    try:
        children = sorted(root.iterdir())
    except OSError:
        return []
    return [c.name for c in children if not c.name.startswith(TMP_PREFIX) and is_model_dir(c)]


def missing_path_message(spec: str) -> str:
    """What to say about a local-looking model path that does not exist: the model directories that do."""
    path = Path(spec).expanduser()
    root = path.parent if path.parent != Path(".") and path.parent.is_dir() else checkpoint_dir()
    names = _model_dirs(root)
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    shown = f"{root}/" if str(root) != "." else ""
    message = f"model path {spec!r} does not exist"
    if close:
        message += f" (did you mean {shown}{close[0]}?)"
    if names:
        listed = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        message += f"; model directories in {root}: {listed}"
    else:
        message += (
            f"; {root} holds no finished model (train one, or copy one out of the Docker volume with "
            "`make checkpoint-download NAME=...`)"
        )
    return message + ". `browser-control checkpoints list` shows the checkpoints of CHECKPOINT_DIR."


def _true(value: str | None) -> bool:
    # huggingface_hub's own reading of HF_HUB_OFFLINE.
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    if "huggingface_hub.constants" in sys.modules and sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE:
        return True
    return _true(os.environ.get("HF_HUB_OFFLINE")) or _true(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout_s: float) -> str | None:
    import httpx

    try:
        # Any HTTP answer means the Hub can be reached; only a failure to get one matters here.
        with httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False) as client:
            client.head(endpoint + "/")
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def hub_unreachable(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the Hub answers; otherwise why not (one probe per endpoint and process)."""
    return _probe(hub_endpoint(), timeout_s)


def hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME") or "~/.cache/huggingface", "hub"
        )
    return str(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot directory of a Hub model, or None when it is not in the cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in _MODEL_FILES:
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except ValueError:  # not a valid repo id
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None


def go_offline(reason: str) -> None:
    """Make huggingface_hub (and so transformers, peft, vLLM) use the cache only, for this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    log.warning("%s: loading from the Hugging Face cache only (HF_HUB_OFFLINE=1 for this run)", reason)


def _adapter_base(adapter: Path) -> str:
    import json

    try:
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot read {adapter}/adapter_config.json: {exc}") from None
    if not isinstance(base, str) or not base:
        raise ModelNotFound(f"{adapter}/adapter_config.json names no base_model_name_or_path; cannot load it")
    return base


def locate_model(spec: str, load_adapter: bool = False) -> ModelSource:
    """Where ``spec`` (a directory, a checkpoint path or a Hub id) will load from; ModelNotFound if nowhere.

    A LoRA adapter's base model is located too: always for an adapter alone, and with ``load_adapter``
    also for a LoRA checkpoint that holds a merged copy (evaluation applies the adapter to the base). Never
    waits on the network for longer than one probe of :data:`PROBE_TIMEOUT_S`.
    """
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFound(f"model path {spec!r} is a file; give the model's directory")
        if not is_model_dir(path):
            raise ModelNotFound(
                f"{spec!r} is not a model directory: it has no config.json (full model) or "
                "adapter_config.json (LoRA adapter)"
            )
        adapter = adapter_dir(path)
        base = None
        if adapter is not None and (load_adapter or not (path / "config.json").is_file()):
            base = locate_model(_adapter_base(adapter))
        return ModelSource(spec, "local", str(path.resolve()), base)
    cached = cached_snapshot(spec) if _HUB_ID_RE.match(spec) else None
    if looks_local(spec) and cached is None:
        raise ModelNotFound(missing_path_message(spec))
    if not _HUB_ID_RE.match(spec):
        raise ModelNotFound(
            f"model {spec!r} is neither an existing directory nor a Hugging Face Hub id "
            "(owner/name, e.g. LiquidAI/LFM2-350M)"
        )
    if hub_offline():
        if cached is None:
            raise ModelNotFound(
                f"model {spec!r} is not a local directory and, with HF_HUB_OFFLINE=1, must be in the Hugging "
                f"Face cache ({hub_cache_dir()}), which does not hold it. Download it once with network access "
                "(e.g. `hf download " + spec + "`), set HF_HOME to the cache that has it, or give a local path"
            )
        return ModelSource(spec, "cache", f"offline, {cached}")
    endpoint = hub_endpoint()
    problem = hub_unreachable()
    if problem is None:
        return ModelSource(spec, "cache", str(cached)) if cached else ModelSource(spec, "hub", endpoint)
    if cached is not None:
        go_offline(f"the Hub at {endpoint} cannot be reached ({problem})")
        return ModelSource(spec, "cache", f"offline, {cached}")
    raise ModelNotFound(
        f"model {spec!r} is not a local directory, not in the Hugging Face cache ({hub_cache_dir()}) and the Hub at "
        f"{endpoint} cannot be reached ({problem}). A local checkpoint is given by its path (e.g. "
        f"{checkpoint_dir()}/NAME); a Hub model needs network access once, or HF_HOME pointing at a cache that has it"
    )
