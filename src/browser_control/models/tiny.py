"""Build a small, randomly initialised LFM2 with a locally trained tokenizer.

Used by the tests, the learning-curve benchmark and anyone who wants to exercise the full pipeline
without downloading weights. The tokenizer keeps LFM2's special tokens at LFM2's ids (pad 0, bos 1,
eos/<|im_end|> 7, tool tokens 8-13) and the lfm2_v2 chat template, so TRL parses its tool calls exactly
as it parses LiquidAI/LFM2-350M's. Everything is written with save_pretrained and meant to be loaded by
path with from_pretrained, the same code path as a hub model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

# LFM2's special tokens, in LFM2's id order.
LFM2_SPECIAL_TOKENS = [
    "<|pad|>",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|fim_pre|>",
    "<|fim_mid|>",
    "<|fim_suf|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|tool_list_start|>",
    "<|tool_list_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    "<|tool_response_start|>",
    "<|tool_response_end|>",
]


def _default_corpus() -> list[str]:
    """Text that looks like what the model will read and write: prompts, trees, tool calls."""
    from browser_control.rollout.environment import tool_names
    from browser_control.rollout.prompts import SYSTEM_PROMPT

    names = tool_names()
    lines = [SYSTEM_PROMPT, "List of tools: ", "Goal: Click the button.", "Page:", "RootWebArea", "focused"]
    for role in ("button", "textbox", "checkbox", "link", "combobox", "option", "StaticText", "generic", "radio"):
        for bid in range(0, 120, 3):
            lines.append(f"\t[{bid}] {role} 'Submit'")
    for name in names:
        lines += [f"[{name}(bid='{b}')]" for b in range(0, 60, 7)]
        lines.append(f'{{"name": "{name}", "description": "", "parameters": {{"type": "object"}}}}')
    lines += [f"Step {i} of 10. Last action error: none" for i in range(11)]
    return lines


def _rendered_prompt(tokenizer) -> str:  # type: ignore[no-untyped-def]
    """The system prompt with every tool schema, as the chat template renders it for each episode."""
    from browser_control.rollout.environment import bound_tools
    from browser_control.rollout.prompts import task_prompt

    return tokenizer.apply_chat_template(task_prompt("click-test"), tools=bound_tools(), tokenize=False)


def build_tokenizer(
    output_dir: str | Path,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    extra_corpus: Iterable[str] = (),
    split: str = "words",
):
    """Train a byte-level BPE on ``corpus`` (default: prompt-like text) plus ``extra_corpus`` and save a
    transformers tokenizer with the lfm2_v2 template.

    ``split="words"`` splits the text into words before merging (GPT-2's rule). ``split="digits"`` only
    isolates numbers and line breaks, so merges may span words: the fixed system prompt and tool list of
    every episode shrink from ~1300 tokens to ~140 (a tiny model then trains several times faster), while a
    number is always its own token, so a bid reads the same in the page and in a tool call.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from trl.chat_template_utils import lfm2_v2_chat_template

    if split not in ("words", "digits"):
        raise ValueError(f"split must be 'words' or 'digits', got {split!r}")

    def new_bpe() -> Tokenizer:
        bpe = Tokenizer(models.BPE())
        if split == "digits":
            bpe.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(r"\d+|\n"), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        else:
            bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        return bpe

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=LFM2_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = list(corpus if corpus is not None else _default_corpus()) + list(extra_corpus)
    bpe = new_bpe()
    bpe.train_from_iterator(lines, trainer=trainer)
    tokenizer = _wrap(bpe, lfm2_v2_chat_template)
    if corpus is None:
        # Train again with the rendered system prompt: it starts every episode, so merging it keeps
        # the prompts of a small-vocabulary model short.
        bpe = new_bpe()
        bpe.train_from_iterator(lines + [_rendered_prompt(tokenizer)] * 20, trainer=trainer)
        tokenizer = _wrap(bpe, lfm2_v2_chat_template)
    tokenizer.save_pretrained(str(output_dir))
    return tokenizer


def _wrap(bpe, chat_template: str):  # type: ignore[no-untyped-def]
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|pad|>",
        bos_token="<|startoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=LFM2_SPECIAL_TOKENS[2:],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


# LiquidAI/LFM2-350M's architecture (its config.json): 16 layers, 6 of them attention. Benchmarks build it
# with random weights where no model hub is reachable.
LFM2_350M_SHAPE = dict(
    vocab_size=65536,
    hidden_size=1024,
    intermediate_size=6656,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=8,
    full_attn_idxs=[2, 5, 8, 10, 12, 14],
    block_multiple_of=256,
    block_ffn_dim_multiplier=1.0,
    block_auto_adjust_ff_dim=True,
    conv_L_cache=3,
    max_position_embeddings=128_000,
    tie_word_embeddings=True,
)

# The Lfm2Config attributes vLLM's LFM2 model reads (vllm/model_executor/models/lfm2.py, 0.26). transformers
# defines all but conv_dim, block_dim and conv_dim_out, which LFM2-350M's config.json carries and vLLM refuses
# to start without.
VLLM_LFM2_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "layer_types",
    "norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "conv_L_cache",
    "conv_bias",
    "conv_dim",
    "conv_dim_out",
    "block_dim",
    "block_multiple_of",
    "block_ffn_dim_multiplier",
    "block_auto_adjust_ff_dim",
)


def lfm2_config(**fields):  # type: ignore[no-untyped-def]
    """An ``Lfm2Config`` as LiquidAI's checkpoints write it: the convolution widths equal the hidden size."""
    from transformers import Lfm2Config

    width = fields["hidden_size"]
    return Lfm2Config(**{"conv_dim": width, "conv_dim_out": width, "block_dim": width, **fields})


# The tiny shape the benchmarks use (twice build_tiny_lfm2's default width): fast on a CPU, and its rollouts
# are driven by an imprinted reply, not by what it learned.
TINY_SHAPE = dict(
    vocab_size=1024,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    full_attn_idxs=[1],
    block_multiple_of=8,
    max_position_embeddings=8192,
)


def build_lfm2(
    output_dir: str | Path,
    shape: dict,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    extra_corpus: Iterable[str] = (),
    split: str = "words",
) -> Path:
    """Write a randomly initialised LFM2 of ``shape`` (Lfm2Config fields, e.g. :data:`TINY_SHAPE` or
    :data:`LFM2_350M_SHAPE`) and the local tokenizer beside it; the one builder of tests and benchmarks."""
    import torch
    from transformers import Lfm2ForCausalLM

    output_dir = Path(output_dir)
    tokenizer = build_tokenizer(output_dir, corpus, vocab_size, extra_corpus, split)
    torch.manual_seed(seed)
    config = lfm2_config(
        **{"vocab_size": len(tokenizer), **shape},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Lfm2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(output_dir))
    return output_dir


def build_tiny_lfm2(
    output_dir: str | Path,
    hidden_size: int = 16,
    num_hidden_layers: int = 2,
    intermediate_size: int = 32,
    num_attention_heads: int = 2,
    vocab_size: int = 1024,
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    attention_layers: Sequence[int] | None = None,
    extra_corpus: Iterable[str] = (),
    split: str = "words",
) -> Path:
    """Write a random LFM2 and its tokenizer: short-convolution layers, attention in ``attention_layers``
    (default: the last layer only)."""
    attention = sorted(set(attention_layers)) if attention_layers else [num_hidden_layers - 1]
    if not all(0 <= i < num_hidden_layers for i in attention):
        raise ValueError(f"attention_layers {list(attention)} must lie in 0..{num_hidden_layers - 1}")
    shape = dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        full_attn_idxs=attention,
        block_multiple_of=8,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    return build_lfm2(
        output_dir, shape, seed=seed, corpus=corpus, vocab_size=vocab_size, extra_corpus=extra_corpus, split=split
    )


# Every bid 0-255 in both of its spellings (in the page, in a tool call), so each is one token wherever it
# appears. The goals and pages of demonstrations stay out: a goal is read as several tokens, not learnt as one.
BID_CORPUS = tuple([f"\t[{b}] button 'x'" for b in range(256)] + [f"[click(bid='{b}')]" for b in range(256)])


def build_learning_lfm2(
    output_dir: str | Path,
    hidden_size: int,
    num_hidden_layers: int,
    attention_layers: Sequence[int] | None = None,
    seed: int = 0,
    vocab_size: int = 2048,
    split: str = "digits",
) -> Path:
    """The from-scratch model of the learning benchmarks (benchmarks/learning_curve.py, learning_sweep.py):
    its tokenizer's corpus adds ``BID_CORPUS``."""
    return build_tiny_lfm2(
        output_dir,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        intermediate_size=2 * hidden_size,
        num_attention_heads=4,
        seed=seed,
        vocab_size=vocab_size,
        attention_layers=attention_layers,
        extra_corpus=BID_CORPUS,
        split=split,
    )


def imprint_reply(
    model_dir: str | Path,
    reply: str | Sequence[str],
    prompts: list[list[dict]],
    tools: list | None = None,
    steps: int = 200,
    learning_rate: float = 3e-3,
    max_rounds: int = 4,
    end_turn_prompts: list[list[dict]] | None = None,
) -> Path:
    """Train the model in ``model_dir`` (in place) to answer every prompt with ``reply``.

    A random model almost never emits a well-formed tool call, so a rollout would end after one turn.
    Imprinting a fixed reply such as ``<|tool_call_start|>[click(bid='13')]<|tool_call_end|>`` gives
    multi-turn episodes of a known shape: what pipeline tests and throughput benchmarks need. Several
    replies (repeats weigh more) give a policy that samples among them, so GRPO groups see different
    rewards. Loss is on the reply tokens only. Training goes on in rounds of ``steps`` until greedy decoding
    of the first and last prompt gives one of the replies, for at most ``max_rounds`` rounds.

    ``end_turn_prompts`` (e.g. conversations whose last tool result says the episode is over) are
    answered with the end of turn alone, as an instruct model does; without them a random model keeps
    talking to the token limit once its episode has ended.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(device)
    replies = [reply] if isinstance(reply, str) else list(reply)
    replies_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in replies]
    examples = []
    end_turn = [tokenizer.eos_token_id]
    # As many examples per end-of-turn prompt as per reply prompt, so that both weigh the same.
    to_learn = [(m, replies_ids) for m in prompts]
    to_learn += [(m, [end_turn] * len(replies_ids)) for m in end_turn_prompts or []]
    for messages, answers in to_learn:
        prompt_ids = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        for reply_ids in answers:
            ids = list(prompt_ids) + reply_ids
            labels = [-100] * len(prompt_ids) + reply_ids
            examples.append((torch.tensor([ids], device=device), torch.tensor([labels], device=device)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)

    def answers_with_reply(example: tuple) -> bool:
        input_ids, labels = example
        prompt = input_ids[:, : int((labels[0] == -100).sum())]
        model.eval()
        with torch.no_grad():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=max(map(len, replies_ids)),
                pad_token_id=tokenizer.pad_token_id,
            )
        model.train()
        answer = out[0, prompt.shape[1] :].tolist()
        expected = replies_ids if labels[0, -2].item() != -100 else [end_turn]
        return any(answer[: len(ids)] == ids for ids in expected)

    model.train()
    for round_ in range(max_rounds):
        for step in range(steps):
            input_ids, labels = examples[(round_ * steps + step) % len(examples)]
            loss = model(input_ids=input_ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if all(answers_with_reply(e) for e in (examples[0], examples[-1])):
            break
    else:
        raise RuntimeError(f"the model did not learn to answer {replies!r} in {max_rounds * steps} steps")
    model.save_pretrained(str(model_dir))
    return Path(model_dir)
