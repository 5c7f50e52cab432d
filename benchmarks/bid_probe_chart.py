"""Held-out accuracy of bid_probe.py runs over the samples they trained on, one panel per task.

Each FILE is the JSON lines a ``benchmarks/bid_probe.py`` run printed (``LABEL=FILE`` names its line in the
legend; the default is the file's name). Supervised runs are solid, REINFORCE dashed, filtered dotted; the
x axis counts training samples (labelled ones for supervised, sampled bids for the reward-driven modes), so
runs of different batch sizes line up. The best fixed answer and a random element of the answer's role
(reads the page, not the goal) are drawn from the first file.

    python benchmarks/bid_probe_chart.py --out probes.png sup=sup-128.jsonl rl=rl-128-lr1e-4.jsonl
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

STYLE = {"supervised": "-", "reinforce": "--", "filtered": ":"}


def read_run(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's settings and its evaluation lines."""
    settings: dict[str, Any] = {}
    points = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{number}: not a bid_probe.py JSON line: {exc}") from None
        if "settings" in row:
            settings = row["settings"]
        elif "held_out" in row:
            points.append(row)
    if not points:
        raise SystemExit(f"{path}: no evaluation lines (was the probe stopped before its first one?)")
    return settings, points


def plot(runs: list[tuple[str, dict[str, Any], list[dict[str, Any]]]], out: Path, title: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({task for _, _, points in runs for point in points for task in point["held_out"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(11 * len(tasks), 5), squeeze=False)
    reference = runs[0][2][-1]
    palette = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")  # no two runs in one colour
    for ax, task in zip(axes[0], tasks, strict=True):
        for index, (label, settings, points) in enumerate(runs):
            shown = [p for p in points if task in p["held_out"]]
            ax.plot(
                [p["samples"] / 1000 for p in shown],
                [100 * p["held_out"][task] for p in shown],
                STYLE.get(settings.get("mode", ""), "-"),
                marker=".",
                color=palette(index % palette.N),
                label=label,
            )
        for key, name, color in (
            ("best_fixed_answer", "best fixed answer", "tab:red"),
            ("random_same_role", "random element of the answer's role", "tab:gray"),
        ):
            if task in reference.get(key, {}):
                ax.axhline(100 * reference[key][task], color=color, linestyle="-.", linewidth=1, label=name)
        ax.set_title(task, fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_xlabel("training samples (thousands): labelled, or sampled and rewarded", fontsize=8)
        ax.set_ylabel("held-out greedy accuracy of the bid (%)", fontsize=8)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the panel: lines cross it
    title = title or "bid_probe.py: supervised (solid), REINFORCE (dashed), filtered (dotted)"
    fig.suptitle(textwrap.fill(title, 120), fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]FILE", help="JSON lines of bid_probe.py runs")
    parser.add_argument("--out", type=Path, required=True, help="the chart (PNG)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    runs = []
    for spec in args.runs:
        label, _, name = spec.rpartition("=")
        path = Path(name)
        if not path.is_file():
            parser.error(f"{path}: no such file")
        runs.append((label or path.stem, *read_run(path)))
    plot(runs, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
