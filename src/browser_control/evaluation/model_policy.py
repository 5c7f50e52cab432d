"""A language model as an evaluation policy, generating and parsing tool calls exactly as training does.

TRL's tool loop (``GRPOTrainer._tool_call_loop``) never re-renders a conversation: it keeps the token
ids of the prompt, appends the generated ids as they are, then appends the ids of the tool result
computed from a dummy conversation. A model is evaluated here with the same arithmetic, the same
chat template (lfm2 swapped for lfm2_v2, the training-safe variant when the template is not
prefix-preserving), the same tool list and TRL's own response parser, so an evaluation score is a
score on the distribution the model was trained on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from browser_control.agent.environment import bound_tools
from browser_control.checkpoints_cli import adapter_dir, checkpoint_dir, model_files_problem
from browser_control.evaluation.policy import Decision, Episode, Policy, tool_calls_of
from browser_control.evaluation.runner import EvaluationError
from browser_control.model_source import looks_local, missing_path_message

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str) -> str:
    """A local model directory, a checkpoint name under CHECKPOINT_DIR, or a Hugging Face Hub id.

    Raises EvaluationError with what was looked for when the model cannot be found.
    """
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EvaluationError(f"model path {spec!r} is a file; give the model's directory")
        if not (path / "config.json").exists() and adapter_dir(path) is None:
            raise EvaluationError(f"{spec!r} is not a model directory: it has no config.json (full model) or "
                                  "adapter_config.json (LoRA adapter)")
        problem = model_files_problem(path)
        if problem:
            raise EvaluationError(f"model {spec!r} is corrupt: {problem}")
        return str(path)
    named = checkpoint_dir() / spec
    if "/" not in spec and named.is_dir():
        return resolve_model(str(named))
    if _HUB_ID_RE.match(spec) and not looks_local(spec):
        return spec  # a hub id; from_pretrained finds it in the local cache or downloads it
    raise EvaluationError(missing_path_message(spec) + " A Hub model is given by its id, e.g. LiquidAI/LFM2-350M.")


TRAINING_CONFIG_FILE = "training_config.yaml"  # written beside every checkpoint by `browser-control train`


def training_config(spec: str) -> dict[str, Any] | None:
    """The training configuration saved with a checkpoint; None for a Hub id or a model without one."""
    import yaml

    path = Path(resolve_model(spec)) / TRAINING_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def trained_tasks(config: dict[str, Any]) -> list[str]:
    """Task names of a training configuration (``tasks: [click-test]`` or ``[{name: ..., weight: ...}]``)."""
    names = []
    for task in config.get("tasks") or []:
        name = task.get("name") if isinstance(task, dict) else task
        if isinstance(name, str) and name:
            names.append(name)
    return names


def base_model_of(spec: str) -> str | None:
    """The model a checkpoint was trained from: training_config.yaml's model_name, else the adapter's base."""
    config = training_config(spec)
    if config and isinstance(config.get("model_name"), str):
        return config["model_name"]
    lora = _adapter(resolve_model(spec))
    return lora[1] if lora else None


def use_tool_calling_template(tokenizer: Any) -> Any:
    """Swap LFM2's original template, which drops tool calls, for lfm2_v2 (what training does)."""
    from trl.chat_template_utils import lfm2_chat_template, lfm2_v2_chat_template

    if tokenizer.chat_template == lfm2_chat_template:
        tokenizer.chat_template = lfm2_v2_chat_template
    return tokenizer


class ChatCodec:
    """Prompt, tool-result and response token ids for one tokenizer, following TRL's tool loop."""

    def __init__(self, tokenizer: Any, eos_token_ids: Sequence[int] = ()):
        from trl.chat_template_utils import (
            add_response_schema,
            get_training_chat_template,
            is_chat_template_prefix_preserving,
        )

        if not getattr(tokenizer, "chat_template", None):
            raise EvaluationError("the tokenizer has no chat template; a tool-calling chat model is needed")
        self.tokenizer = use_tool_calling_template(tokenizer)
        if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema",
                                                                              None) is None:
            try:
                add_response_schema(tokenizer)
            except ValueError as exc:
                raise EvaluationError(f"cannot parse this model's tool calls: {exc}") from None
        self.chat_template = (None if is_chat_template_prefix_preserving(tokenizer)
                              else get_training_chat_template(tokenizer))
        ids = [i for i in eos_token_ids if i is not None]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
            ids.insert(0, tokenizer.eos_token_id)
        if not ids:
            raise EvaluationError("the tokenizer has no end-of-turn (eos) token")
        self.eos_token_ids = ids

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[Any]) -> list[int]:
        return list(self.tokenizer.apply_chat_template(
            messages, tools=tools or None, chat_template=self.chat_template, add_generation_prompt=True,
            tokenize=True, return_dict=False,
        ))

    def tool_suffix_ids(self, tool_messages: list[dict[str, Any]]) -> list[int]:
        """The ids TRL appends after a tool call: the tool turn(s) and the next assistant header."""
        # Same construction as GRPOTrainer._get_tool_suffix_ids.
        dummy = [
            {"role": "user", "content": "dummy"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]},
        ]
        prefix = list(self.tokenizer.apply_chat_template(dummy, add_generation_prompt=False, tokenize=True,
                                                         chat_template=self.chat_template, return_dict=False))
        full = list(self.tokenizer.apply_chat_template(dummy + tool_messages, add_generation_prompt=True,
                                                       tokenize=True, chat_template=self.chat_template,
                                                       return_dict=False))
        eos_positions = [i for i, t in enumerate(prefix) if t == self.tokenizer.eos_token_id]
        if eos_positions:
            prefix = prefix[: eos_positions[-1] + 1]
        if full[: len(prefix)] != prefix:
            raise EvaluationError("the chat template renders tool results in a way that is not prefix-preserving")
        return full[len(prefix):]

    def cut_at_eos(self, ids: Sequence[int]) -> list[int]:
        out = []
        for token in ids:
            out.append(int(token))
            if token in self.eos_token_ids:
                break
        return out

    def decode(self, completion: list[int]) -> str:
        return self.tokenizer.decode(completion, skip_special_tokens=False)

    def parse(self, completion: list[int], prefix: list[int], tools: list[Any]) -> dict[str, Any]:
        from trl.chat_template_utils import parse_response

        return parse_response(self.tokenizer, completion, prefix=prefix, tools=tools)


class TransformersGenerator:
    """Batched ``model.generate`` over left-padded token ids."""

    def __init__(self, model: Any, pad_token_id: int, eos_token_ids: Sequence[int], max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0):
        self.model = model
        self.pad_token_id = pad_token_id
        self.eos_token_ids = list(eos_token_ids)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p

    def generate(self, batch: list[list[int]]) -> list[list[int]]:
        import torch

        device = next(self.model.parameters()).device
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
            if self.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        was_training = self.model.training
        self.model.eval()  # also called from training callbacks, where dropout is on
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device),
                    max_new_tokens=self.max_new_tokens, pad_token_id=self.pad_token_id,
                    eos_token_id=self.eos_token_ids, use_cache=True, **sampling,
                )
        finally:
            if was_training:
                self.model.train()
        return [row[width:].tolist() for row in out.cpu()]


class VLLMGenerator:
    """vLLM offline engine on token ids (``--backend vllm``); needs a full model directory, not an adapter."""

    def __init__(self, model_path: str, eos_token_ids: Sequence[int], max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None):
        from browser_control.models.vllm_setup import prepare_vllm_environment

        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise EvaluationError("--backend vllm needs vLLM (pip install 'vllm>=0.22,<=0.31'); "
                                  "or use the default --backend transformers") from None
        self.eos_token_ids = list(eos_token_ids)
        self.max_new_tokens = max_new_tokens  # the policy cuts each episode's turn to its remaining budget
        prepare_vllm_environment()
        self.llm = LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       seed=0)
        self.params = SamplingParams(temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                     max_tokens=max_new_tokens, stop_token_ids=self.eos_token_ids)

    def generate(self, batch: list[list[int]]) -> list[list[int]]:
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in batch], self.params, use_tqdm=False)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            # Keep the end-of-turn token in the completion, as transformers does and TRL expects.
            if completion.finish_reason == "stop" and (not ids or ids[-1] not in self.eos_token_ids):
                ids.append(self.eos_token_ids[0])
            results.append(ids)
        return results


class ModelPolicy(Policy):
    """Greedy (by default) tool calling with a chat model; one batched generation per turn.

    ``max_completion_tokens`` is TRL's ``max_completion_length``: the tokens of an episode after its
    prompt, tool results included. Training ends an episode there, so evaluation can too.
    """

    kind = "model"

    def __init__(self, codec: ChatCodec, generator: TransformersGenerator | VLLMGenerator, label: str,
                 max_context_tokens: int | None = None, settings: dict[str, Any] | None = None,
                 max_completion_tokens: int | None = None):
        self.codec = codec
        self.generator = generator
        self.label = label
        self.max_context_tokens = max_context_tokens
        self.max_completion_tokens = max_completion_tokens
        self.settings = {**(settings or {}), "max_completion_tokens": max_completion_tokens}

    def start(self, episode: Episode) -> None:
        tools = bound_tools(episode.env)
        episode.state["tools"] = tools
        episode.state["ids"] = self.codec.prompt_ids(episode.messages, tools)
        episode.state["prompt_length"] = len(episode.state["ids"])

    def _room(self, episode: Episode) -> int:
        """Tokens the next turn may generate (<= 0: the episode is out of budget)."""
        ids = episode.state["ids"]
        room = self.generator.max_new_tokens
        if self.max_context_tokens is not None:
            room = min(room, self.max_context_tokens - len(ids))
        if self.max_completion_tokens is not None:
            room = min(room, self.max_completion_tokens - (len(ids) - episode.state["prompt_length"]))
        return room

    def decide(self, episodes: Sequence[Episode]) -> list[Decision]:
        decisions: list[Decision | None] = [None] * len(episodes)
        ready = []
        for i, episode in enumerate(episodes):
            if self._room(episode) <= 0:
                used = len(episode.state["ids"]) - episode.state["prompt_length"]
                over_completion = self.max_completion_tokens is not None and used >= self.max_completion_tokens
                decisions[i] = Decision([], stop_reason="completion_limit" if over_completion else "context_limit")
            else:
                ready.append(i)
        if ready:
            outputs = self.generator.generate([episodes[i].state["ids"] for i in ready])
            for i, output in zip(ready, outputs, strict=True):
                episode = episodes[i]
                # All rows share one max_new_tokens; cut each to its own budget, as TRL truncates.
                completion = self.codec.cut_at_eos(output)[: self._room(episode)]
                episode.state["completion"] = completion
                message = (self.codec.parse(completion, episode.state["ids"], episode.state["tools"])
                           if completion else {"role": "assistant", "content": ""})
                decisions[i] = Decision(tool_calls_of(message), assistant_message=message,
                                        raw_output=self.codec.decode(completion))
        return [d for d in decisions if d is not None]

    def observe(self, episode: Episode, decision: Decision, tool_messages: list[dict[str, Any]]) -> None:
        if tool_messages:
            episode.state["ids"] = (episode.state["ids"] + episode.state["completion"]
                                    + self.codec.tool_suffix_ids(tool_messages))

    def close(self) -> None:
        """Drop the model so the next one of a comparison fits in GPU memory."""
        self.generator = None  # type: ignore[assignment]
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _eos_ids(generation_config: Any) -> list[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def from_model(model: Any, tokenizer: Any, label: str = "model", *, max_new_tokens: int = 256,
               temperature: float = 0.0, top_p: float = 1.0, max_context_tokens: int | None = None,
               max_completion_tokens: int | None = None) -> ModelPolicy:
    """A policy around a model already in memory (e.g. the one being trained, from a TrainerCallback)."""
    codec = ChatCodec(tokenizer, _eos_ids(getattr(model, "generation_config", None)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else codec.eos_token_ids[0]
    generator = TransformersGenerator(model, pad, codec.eos_token_ids, max_new_tokens, temperature, top_p)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_context_tokens is not None:
        limit = min(limit, max_context_tokens) if limit else max_context_tokens
    settings = {"backend": "transformers", "max_new_tokens": max_new_tokens, "temperature": temperature}
    return ModelPolicy(codec, generator, label, limit, settings, max_completion_tokens)


def _adapter(path: str) -> tuple[Path, str] | None:
    """(adapter directory, base model) of a LoRA checkpoint; None for a full model or a Hub id."""
    adapter = adapter_dir(Path(path)) if Path(path).is_dir() else None
    if adapter is None:
        return None
    if adapter != Path(path) and (Path(path) / "config.json").is_file():
        return None  # merge_lora: the checkpoint is the merged model; adapter/ is kept beside it
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise EvaluationError(f"{adapter}/adapter_config.json names no base_model_name_or_path; cannot load it")
    return adapter, base


def load_model_policy(spec: str, *, backend: str = "transformers", label: str | None = None,
                      device: str = "auto", dtype: str = "auto", max_new_tokens: int = 256,
                      temperature: float = 0.0, top_p: float = 1.0, max_context_tokens: int | None = None,
                      max_completion_tokens: int | None = None, gpu_memory_utilization: float = 0.85) -> ModelPolicy:
    """Load a model directory, checkpoint name or Hub id (a LoRA adapter is merged into its base)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(spec)
    label = label or spec
    lora = _adapter(path)
    base = lora[1] if lora else None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                   "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    try:
        # A LoRA run saves its (template-swapped) tokenizer beside the adapter; fall back to the base's.
        candidates = [Path(path), lora[0]] if lora else [Path(path)]
        with_tokenizer = [d for d in candidates if (d / "tokenizer_config.json").exists()]
        tokenizer_source = str(with_tokenizer[0]) if with_tokenizer else resolve_model(base) if base else path
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        if backend == "vllm":
            if base:
                raise EvaluationError(f"{spec} is a LoRA adapter; vLLM evaluation needs a merged model: "
                                      f"browser-control checkpoints export NAME --merge-lora --output DIR")
            codec = ChatCodec(tokenizer, _eos_ids(_generation_config(path)))
            generator: TransformersGenerator | VLLMGenerator = VLLMGenerator(
                path, codec.eos_token_ids, max_new_tokens, temperature, top_p, gpu_memory_utilization,
                max_context_tokens)
            settings = {"backend": "vllm", "max_new_tokens": max_new_tokens, "temperature": temperature,
                        "model": spec}
            engine_limit = generator.llm.llm_engine.model_config.max_model_len  # what TRL reads too
            limit = min(engine_limit, max_context_tokens) if max_context_tokens else engine_limit
            return ModelPolicy(codec, generator, label, limit, settings, max_completion_tokens)
        if lora:
            from peft import PeftModel

            model = AutoModelForCausalLM.from_pretrained(resolve_model(lora[1]), dtype=torch_dtype)
            # Merging makes generation as fast as the full model; nothing is written back.
            model = PeftModel.from_pretrained(model, str(lora[0])).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except EvaluationError:
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        # OSError: missing files; the others: what transformers and safetensors raise for files that exist
        # but are not what they should be. One line, the first of the library's message.
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EvaluationError(f"could not load model {spec!r} from {path}: {first_line}") from None
    model.to(device)
    policy = from_model(model, tokenizer, label, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, max_context_tokens=max_context_tokens,
                        max_completion_tokens=max_completion_tokens)
    policy.settings.update({"model": spec, "device": device, "dtype": str(torch_dtype).removeprefix("torch."),
                            "lora_base": base})
    return policy


def _generation_config(path: str) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None
