"""A language model as an evaluation policy, generating and parsing tool calls exactly as training does.

The model is driven with the token arithmetic of TRL's tool loop (:mod:`browser_control.evaluation.generation`),
the chat template training used (:mod:`browser_control.models.chat_template`), the same tool list and TRL's own
response parser, so an evaluation score is a score on the distribution the model was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from browser_control.evaluation.generation import ChatCodec, TransformersGenerator, VLLMGenerator, eos_ids
from browser_control.evaluation.model_lookup import adapter_of, resolve_model
from browser_control.evaluation.policy import Decision, Episode, Policy, tool_calls_of
from browser_control.evaluation.runner import EvaluationError
from browser_control.rollout.environment import bound_tools


class ModelPolicy(Policy):
    """Greedy (by default) tool calling with a chat model; one batched generation per turn.

    ``max_completion_tokens`` is TRL's ``max_completion_length``: the tokens of an episode after its
    prompt, tool results included. Training ends an episode there, so evaluation can too.
    """

    kind = "model"

    def __init__(
        self,
        codec: ChatCodec,
        generator: TransformersGenerator | VLLMGenerator,
        label: str,
        max_context_tokens: int | None = None,
        settings: dict[str, Any] | None = None,
        max_completion_tokens: int | None = None,
    ):
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
                message = (
                    self.codec.parse(completion, episode.state["ids"], episode.state["tools"])
                    if completion
                    else {"role": "assistant", "content": ""}
                )
                decisions[i] = Decision(
                    tool_calls_of(message), assistant_message=message, raw_output=self.codec.decode(completion)
                )
        return [d for d in decisions if d is not None]

    def observe(self, episode: Episode, decision: Decision, tool_messages: list[dict[str, Any]]) -> None:
        if tool_messages:
            episode.state["ids"] = (
                episode.state["ids"] + episode.state["completion"] + self.codec.tool_suffix_ids(tool_messages)
            )

    def close(self) -> None:
        """Drop the model so the next one of a comparison fits in GPU memory."""
        self.generator = None  # type: ignore[assignment]
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def from_model(
    model: Any,
    tokenizer: Any,
    label: str = "model",
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_context_tokens: int | None = None,
    max_completion_tokens: int | None = None,
) -> ModelPolicy:
    """A policy around a model already in memory (e.g. the one being trained, from a TrainerCallback)."""
    codec = ChatCodec(tokenizer, eos_ids(getattr(model, "generation_config", None)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else codec.eos_token_ids[0]
    generator = TransformersGenerator(model, pad, codec.eos_token_ids, max_new_tokens, temperature, top_p)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_context_tokens is not None:
        limit = min(limit, max_context_tokens) if limit else max_context_tokens
    settings = {"backend": "transformers", "max_new_tokens": max_new_tokens, "temperature": temperature}
    return ModelPolicy(codec, generator, label, limit, settings, max_completion_tokens)


def load_model_policy(
    spec: str,
    *,
    backend: str = "transformers",
    label: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_context_tokens: int | None = None,
    max_completion_tokens: int | None = None,
    gpu_memory_utilization: float = 0.85,
) -> ModelPolicy:
    """Load a model directory, checkpoint name or Hub id (a LoRA adapter is merged into its base)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(spec)
    label = label or spec
    lora = adapter_of(path)
    base = lora[1] if lora else None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = {
        "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
    }[dtype]
    try:
        # A LoRA run saves its (template-swapped) tokenizer beside the adapter; fall back to the base's.
        candidates = [Path(path), lora[0]] if lora else [Path(path)]
        with_tokenizer = [d for d in candidates if (d / "tokenizer_config.json").exists()]
        tokenizer_source = str(with_tokenizer[0]) if with_tokenizer else resolve_model(base) if base else path
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        if backend == "vllm":
            if base:
                raise EvaluationError(
                    f"{spec} is a LoRA adapter; vLLM evaluation needs a merged model: "
                    f"browser-control checkpoints export NAME --merge-lora --output DIR"
                )
            codec = ChatCodec(tokenizer, eos_ids(_generation_config(path)))
            generator: TransformersGenerator | VLLMGenerator = VLLMGenerator(
                path,
                codec.eos_token_ids,
                max_new_tokens,
                temperature,
                top_p,
                gpu_memory_utilization,
                max_context_tokens,
            )
            settings = {"backend": "vllm", "max_new_tokens": max_new_tokens, "temperature": temperature, "model": spec}
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
    policy = from_model(
        model,
        tokenizer,
        label,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        max_context_tokens=max_context_tokens,
        max_completion_tokens=max_completion_tokens,
    )
    policy.settings.update(
        {"model": spec, "device": device, "dtype": str(torch_dtype).removeprefix("torch."), "lora_base": base}
    )
    return policy


def _generation_config(path: str) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None
