"""Can the learning benchmark's model learn a task's goal -> element lookup at all? A probe on the bid alone.

GRPO trains the whole tool call; this probe isolates the part that reads the page. Each recorded one-action
demonstration (``browser-control demos --max-episode-steps 1``) becomes its prompt, as a rollout starts, plus
the forced prefix of its tool call (``<|tool_call_start|>[click(bid='``): the only thing left to choose is
the bid, one token of the benchmark tokenizer. Prompts are split by seed (the first 60% train, the rest held
out), and the model is trained in one of two ways:

- ``--mode supervised``: cross-entropy on the demonstrated bid. How many labelled instances the model needs
  to generalise the lookup to unseen pages, an upper bound for what a reward can teach.
- ``--mode reinforce``: from a start of ``--start-steps`` of cross-entropy, sample ``--generations`` bids per
  prompt, reward 1 for the demonstrated one, group-normalised advantages: GRPO's signal on the bid, without
  the rest of the call.
- ``--mode filtered``: the same samples and reward, but cross-entropy on the rewarded samples only
  (rejection-sampling fine-tuning): another objective on the same signal, with no push away from failures.

Both reward-driven modes start from ``--start-steps`` of cross-entropy: ``--start blind`` (default) on bids
shuffled within the task, as the benchmark's shuffled demonstrations; ``--start same-role`` on a random
element of the demonstrated one's role on the same page (reads the page, not the goal); ``--start scripted``
on the demonstrated bids, a partial supervised start that reinforcement has to carry further.

Every ``--eval-every`` steps it prints held-out greedy accuracy per task (one JSON line) beside the share of
the most frequent training bid (the best fixed answer on these prompts) and the expected accuracy of a random
element of the answer's role on each page (a policy that reads the page but not the goal). One CPU thread,
seeded; ``--device cuda`` runs the model on a GPU (many probes can share one), ``--deadline-s`` stops a probe
after that much training time with a last evaluation.

    browser-control demos --tasks click-button --episodes 1600 --max-episode-steps 1 --output cb.jsonl
    python benchmarks/bid_probe.py --demos cb.jsonl --mode supervised --steps 400
    python benchmarks/bid_probe.py --demos cb.jsonl --mode reinforce --steps 600 --batch 64 --lr 3e-4
    python benchmarks/bid_probe.py --demos cb.jsonl --mode filtered --device cuda --steps 5000 --batch 256 \
        --deadline-s 400
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


class Prompt(NamedTuple):
    task: str
    seed: int
    ids: list[int]
    bid: int  # the demonstrated bid's token
    same_role: tuple[int, ...]  # the tokens of the page's elements of the demonstrated element's role


def load_prompts(demos: Path, tasks: list[str] | None, tokenizer) -> list[Prompt]:
    from browser_control.evaluation.observation import parse_observation
    from browser_control.sft.demos import read_demos

    prompts = []
    for record in read_demos(demos):
        if tasks and record["task_name"] not in tasks:
            continue
        messages = record["messages"]
        call = messages[2]["tool_calls"][0]["function"]
        if "bid" not in call["arguments"]:
            continue
        text = tokenizer.apply_chat_template(
            messages[:2], tools=record["tools"], add_generation_prompt=True, tokenize=False
        )
        text += f"<|tool_call_start|>[{call['name']}(bid='"
        bid = tokenizer(call["arguments"]["bid"], add_special_tokens=False).input_ids
        if len(bid) != 1:
            raise SystemExit(
                f"bid {call['arguments']['bid']!r} is {len(bid)} tokens: build the model with the digit split"
            )
        user = str(messages[1]["content"])
        try:  # the task line, then the observation the model sees
            page = parse_observation(user[user.index("Goal: ") :])
            roles = {node.bid: node.role for node in page.nodes if node.bid is not None}
        except ValueError:
            roles = {}
        role = roles.get(str(call["arguments"]["bid"]))
        same_role = [b for b, r in roles.items() if r == role] or [str(call["arguments"]["bid"])]
        prompts.append(
            Prompt(
                record["task_name"],
                record["seed"],
                tokenizer(text, add_special_tokens=False).input_ids,
                bid[0],
                tuple(tokenizer(b, add_special_tokens=False).input_ids[0] for b in same_role),
            )
        )
    if not prompts:
        raise SystemExit(f"{demos}: no one-action demonstrations with a bid for {tasks or 'any task'}")
    return prompts


def split_by_seed(prompts: list[Prompt], train_share: float) -> tuple[list[Prompt], list[Prompt]]:
    by_task: dict[str, list[Prompt]] = collections.defaultdict(list)
    for prompt in prompts:
        by_task[prompt.task].append(prompt)
    train, held_out = [], []
    for rows in by_task.values():
        rows.sort(key=lambda p: p.seed)
        cut = int(len(rows) * train_share)
        train += rows[:cut]
        held_out += rows[cut:]
    return train, held_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", type=Path, required=True, help="one-action demonstrations (JSONL)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks of the file to use (default: all)")
    parser.add_argument("--mode", choices=["supervised", "reinforce", "filtered"], default="supervised")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--attention-layers", default="1,3")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32, help="samples per step (reinforce: prompts x generations)")
    parser.add_argument("--generations", type=int, default=8, help="reinforce: samples per prompt")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--start",
        choices=["blind", "same-role", "scripted"],
        default="blind",
        help="reinforce: the start's labels: bids shuffled within the task (goal-blind), a random element of "
        "the answer's role on the page (goal-blind, page-reading) or the demonstrated ones",
    )
    parser.add_argument("--start-steps", type=int, default=100, help="reinforce: steps of the start (lr 1e-3)")
    parser.add_argument("--train-share", type=float, default=0.6, help="share of each task's seeds trained on")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0, help="model initialisation, sampling and batches")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bid-probe"), help="where the model is built")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="auto: cuda if present")
    parser.add_argument(
        "--deadline-s", type=float, default=None, help="stop after this many seconds of training (then evaluate)"
    )
    args = parser.parse_args()
    if args.mode != "supervised" and args.batch % args.generations:
        parser.error("--batch must be a multiple of --generations")
    if args.deadline_s is not None and args.deadline_s <= 0:
        parser.error("--deadline-s must be positive")

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from browser_control.models.tiny import build_learning_lfm2

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(1)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    attention = [int(i) for i in args.attention_layers.split(",")]
    model_dir = args.work / f"lfm2-{args.hidden_size}-{args.layers}-{'_'.join(map(str, attention))}-{args.seed}"
    if not (model_dir / "config.json").exists():
        build_learning_lfm2(model_dir, args.hidden_size, args.layers, attention_layers=attention, seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    train, held_out = split_by_seed(
        load_prompts(args.demos, args.tasks.split(",") if args.tasks else None, tokenizer), args.train_share
    )
    if args.batch > len(train) and (args.mode == "supervised" or args.start_steps):
        parser.error(f"--batch {args.batch} is more than the {len(train)} training prompts")
    fixed: dict[str, float] = {}
    same_role: dict[str, float] = {}
    for task in sorted({p.task for p in train}):
        counts = collections.Counter(p.bid for p in train if p.task == task)
        best = counts.most_common(1)[0][0]
        rows = [p for p in held_out if p.task == task]
        fixed[task] = round(sum(p.bid == best for p in rows) / max(1, len(rows)), 3)
        # A goal-blind policy that reads the page: a random element of the answer's role (expected success).
        same_role[task] = round(sum(1 / len(p.same_role) for p in rows) / max(1, len(rows)), 3)

    def last_logits(items: list[Prompt]) -> torch.Tensor:
        width = max(len(p.ids) for p in items)
        ids = torch.full((len(items), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, prompt in enumerate(items):  # left padding: the next token is the last position's
            ids[row, width - len(prompt.ids) :] = torch.tensor(prompt.ids)
            mask[row, width - len(prompt.ids) :] = 1
        output = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
        return output.logits[:, -1, :]

    def evaluate() -> dict[str, float]:
        model.eval()
        right: collections.Counter[str] = collections.Counter()
        seen: collections.Counter[str] = collections.Counter()
        with torch.no_grad():
            for start in range(0, len(held_out), 64):
                chunk = held_out[start : start + 64]
                for prompt, guess in zip(chunk, last_logits(chunk).argmax(-1), strict=True):
                    seen[prompt.task] += 1
                    right[prompt.task] += int(guess.item() == prompt.bid)
        model.train()
        return {task: round(right[task] / seen[task], 3) for task in sorted(seen)}

    def report(step: int, samples: int, loss: float, started: float) -> None:
        line = {"step": step, "samples": samples, "loss": round(loss, 4), "held_out": evaluate()}
        print(
            json.dumps(
                {
                    **line,
                    "best_fixed_answer": fixed,
                    "random_same_role": same_role,
                    "seconds": round(time.perf_counter() - started),
                }
            ),
            flush=True,
        )

    started = time.perf_counter()
    print(json.dumps({"train": len(train), "held_out": len(held_out), "settings": vars(args)}, default=str), flush=True)
    if args.mode != "supervised":
        answers: dict[str, list[int]] = collections.defaultdict(list)
        for prompt in train:
            answers[prompt.task].append(prompt.bid)
        warm = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(args.start_steps):
            items = random.sample(train, args.batch)
            if args.start == "blind":
                labels = torch.tensor([random.choice(answers[p.task]) for p in items])
            elif args.start == "same-role":
                labels = torch.tensor([random.choice(p.same_role) for p in items])
            else:
                labels = torch.tensor([p.bid for p in items])
            loss = F.cross_entropy(last_logits(items), labels.to(device))
            warm.zero_grad()
            loss.backward()
            warm.step()
        report(0, 0, loss.item(), started)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    samples = 0
    training_started = time.perf_counter()
    for step in range(1, args.steps + 1):
        if args.mode == "supervised":
            items = random.sample(train, args.batch)
            loss = F.cross_entropy(last_logits(items), torch.tensor([p.bid for p in items], device=device))
        else:
            groups = random.sample(train, args.batch // args.generations)
            items = [p for p in groups for _ in range(args.generations)]
            policy = torch.distributions.Categorical(logits=last_logits(items))
            sampled = policy.sample()
            reward = (sampled == torch.tensor([p.bid for p in items], device=device)).float()
            if args.mode == "reinforce":
                grouped = reward.view(-1, args.generations)
                advantage = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
                loss = -(advantage.view(-1) * policy.log_prob(sampled)).mean()
            else:  # filtered: learn the rewarded samples as labels; a batch without one teaches nothing
                loss = -(reward * policy.log_prob(sampled)).sum() / reward.sum().clamp(min=1.0)
        samples += len(items)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out_of_time = args.deadline_s is not None and time.perf_counter() - training_started > args.deadline_s
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            report(step, samples, loss.item(), started)
        if out_of_time:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
