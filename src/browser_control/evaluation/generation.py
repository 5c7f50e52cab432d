"""Token ids in, token ids out, following TRL's tool loop: the chat codec and the two generation backends.

TRL's tool loop (``GRPOTrainer._tool_call_loop``) never re-renders a conversation: it keeps the token ids of
the prompt, appends the generated ids as they are, then appends the ids of the tool result computed from a
dummy conversation. :class:`ChatCodec` does the same arithmetic with the same chat template and TRL's own
response parser; :class:`TransformersGenerator` and :class:`VLLMGenerator` turn batches of prompt ids into
completion ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from browser_control.evaluation.runner import EvaluationError
from browser_control.models.chat_template import use_tool_calling_template


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
        if (
            getattr(tokenizer, "response_template", None) is None
            and getattr(tokenizer, "response_schema", None) is None
        ):
            try:
                add_response_schema(tokenizer)
            except ValueError as exc:
                raise EvaluationError(f"cannot parse this model's tool calls: {exc}") from None
        self.chat_template = (
            None if is_chat_template_prefix_preserving(tokenizer) else get_training_chat_template(tokenizer)
        )
        ids = [i for i in eos_token_ids if i is not None]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
            ids.insert(0, tokenizer.eos_token_id)
        if not ids:
            raise EvaluationError("the tokenizer has no end-of-turn (eos) token")
        self.eos_token_ids = ids

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[Any]) -> list[int]:
        return list(
            self.tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                chat_template=self.chat_template,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )

    def tool_suffix_ids(self, tool_messages: list[dict[str, Any]]) -> list[int]:
        """The ids TRL appends after a tool call: the tool turn(s) and the next assistant header."""
        # Same construction as GRPOTrainer._get_tool_suffix_ids.
        dummy = [
            {"role": "user", "content": "dummy"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}],
            },
        ]
        prefix = list(
            self.tokenizer.apply_chat_template(
                dummy, add_generation_prompt=False, tokenize=True, chat_template=self.chat_template, return_dict=False
            )
        )
        full = list(
            self.tokenizer.apply_chat_template(
                dummy + tool_messages,
                add_generation_prompt=True,
                tokenize=True,
                chat_template=self.chat_template,
                return_dict=False,
            )
        )
        eos_positions = [i for i, t in enumerate(prefix) if t == self.tokenizer.eos_token_id]
        if eos_positions:
            prefix = prefix[: eos_positions[-1] + 1]
        if full[: len(prefix)] != prefix:
            raise EvaluationError("the chat template renders tool results in a way that is not prefix-preserving")
        return full[len(prefix) :]

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

    def __init__(
        self,
        model: Any,
        pad_token_id: int,
        eos_token_ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ):
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
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
            if self.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        was_training = self.model.training
        self.model.eval()  # also called from training callbacks, where dropout is on
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.pad_token_id,
                    eos_token_id=self.eos_token_ids,
                    use_cache=True,
                    **sampling,
                )
        finally:
            if was_training:
                self.model.train()
        return [row[width:].tolist() for row in out.cpu()]


class VLLMGenerator:
    """vLLM offline engine on token ids (``--backend vllm``); needs a full model directory, not an adapter."""

    def __init__(
        self,
        model_path: str,
        eos_token_ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
    ):
        from browser_control.models.vllm_setup import prepare_vllm_environment

        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise EvaluationError(
                "--backend vllm needs vLLM (pip install 'vllm>=0.22,<=0.31'); or use the default --backend transformers"
            ) from None
        self.eos_token_ids = list(eos_token_ids)
        self.max_new_tokens = max_new_tokens  # the policy cuts each episode's turn to its remaining budget
        prepare_vllm_environment()
        self.llm = LLM(
            model=model_path, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, seed=0
        )
        self.params = SamplingParams(
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            max_tokens=max_new_tokens,
            stop_token_ids=self.eos_token_ids,
        )

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


def eos_ids(generation_config: Any) -> list[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)
