"""The viewer's HTML: server-rendered pages with inline CSS and SVG, no script and nothing fetched from elsewhere.

Every page works offline and without JavaScript; filters and paging are plain GET forms and links.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from browser_control.evaluation.stats import wilson_interval
from browser_control.recording import EpisodeTrace, TraceStep
from browser_control.viewer.store import NO_DATA, EpisodeRow, Recording, Store, ViewerError

PAGE_SIZE = 50
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:18px;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:600}header .crumbs a{font-weight:400;color:#c9d1e0}
main{padding:16px 24px;max-width:1400px}
h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;margin:6px 0}
th,td{border-bottom:1px solid #e3e6eb;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}tr:hover td{background:#fafbfc}
a{color:#1f5fbf}code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#fff;border:1px solid #e3e6eb;padding:8px;white-space:pre-wrap;word-break:break-word;margin:4px 0;
max-height:420px;overflow:auto;tab-size:2}
.ok{color:#1a7f37;font-weight:600}.fail{color:#c62828;font-weight:600}.muted{color:#6b7280}
.problem{background:#fff4e5;border:1px solid #f0b35a;padding:8px 12px;margin:8px 0;border-radius:4px}
.error-box{background:#fdecea;border:1px solid #e57373;padding:12px 16px;border-radius:4px}
form.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:end;background:#fff;padding:10px;border:1px solid #e3e6eb}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:#4b5563}
input,select,button{font:inherit;padding:3px 6px}
.step{background:#fff;border:1px solid #e3e6eb;border-radius:4px;margin:12px 0;padding:10px 14px}
.step h3{margin:0 0 6px;font-size:15px}.grid{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:14px}
.action{display:inline-block;background:#fff3b0;border:1px solid #e0c200;padding:1px 6px;border-radius:3px;
font:13px ui-monospace,Menlo,Consolas,monospace}
mark{background:#fff3b0;outline:1px solid #e0c200}
.err{color:#c62828}.shot{max-width:100%;border:1px solid #cfd4dc;image-rendering:auto}
.pager{margin:8px 0;display:flex;gap:12px;align-items:center}
.side{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.legend{display:flex;flex-wrap:wrap;gap:14px;font-size:12px;margin:4px 0}
.legend i{display:inline-block;width:10px;height:10px;margin-right:5px}
.badge{display:inline-block;padding:0 6px;border-radius:3px;background:#eef0f4;font-size:12px}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def url(path: str, **params: Any) -> str:
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(clean) if clean else "")


def layout(title: str, body: str, crumbs: Sequence[tuple[str, str]] = ()) -> str:
    trail = " / ".join(f'<a href="{esc(href)}">{esc(text)}</a>' for text, href in crumbs)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · browser-control '
        f'view</title><meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style>'
        f'</head><body><header><a href="/">browser-control view</a><span class="crumbs">{trail}</span></header>'
        f"<main>{body}</main></body></html>"
    )


def error_page(error: ViewerError) -> str:
    body = (
        f'<h1>{esc(error.title)}</h1><div class="error-box" id="error">{esc(error.message)}</div>'
        '<p><a href="/">Back to the list of runs</a></p>'
    )
    return layout(error.title, body)


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else ""


def size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def outcome(success: bool) -> str:
    return '<span class="ok">success</span>' if success else '<span class="fail">failure</span>'


# -- the chart -----------------------------------------------------------------------------------------------


def success_chart(rows: Sequence[EpisodeRow], runs: Sequence[str], tasks: Sequence[str]) -> str:
    """Horizontal bars per task and run with 95% Wilson intervals, as inline SVG."""
    if not rows:
        return ""
    counts: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        if row.ended_by == NO_DATA:  # an environment fault neither solves nor fails the task
            continue
        c = counts.setdefault((row.task, row.run), [0, 0])
        c[0] += row.success
        c[1] += 1
    names = [*tasks, "all tasks"] if len(tasks) > 1 else list(tasks)
    for run in runs:
        wins = sum(c[0] for (t, r), c in counts.items() if r == run)
        total = sum(c[1] for (t, r), c in counts.items() if r == run)
        counts[("all tasks", run)] = [wins, total]
    left, width, bar, gap = 190, 420, 14, 10
    group = bar * len(runs) + gap
    height = len(names) * group + 34
    # The legend is HTML above the chart: run names can be long paths, which SVG text does not wrap.
    legend = ""
    if len(runs) > 1:
        legend = (
            '<div class="legend">'
            + "".join(
                f'<span><i style="background:{COLORS[i % len(COLORS)]}"></i>{esc(run)}</span>'
                for i, run in enumerate(runs)
            )
            + "</div>"
        )
    parts = [
        legend,
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
        f'role="img" aria-label="success rate per task" id="chart" font-size="11" font-family="sans-serif">',
    ]
    top = 0
    for tick in range(0, 101, 20):
        x = left + width * tick / 100
        parts.append(
            f'<line x1="{x}" y1="{top}" x2="{x}" y2="{top + len(names) * group}" stroke="#e3e6eb"/>'
            f'<text x="{x}" y="{top + len(names) * group + 14}" text-anchor="middle">{tick}%</text>'
        )
    for j, name in enumerate(names):
        y0 = top + j * group
        weight = ' font-weight="bold"' if name == "all tasks" else ""
        parts.append(
            f'<text x="{left - 6}" y="{y0 + group / 2}" text-anchor="end" dominant-baseline="middle"'
            f"{weight}>{esc(name)}</text>"
        )
        for i, run in enumerate(runs):
            if not counts.get((name, run), [0, 0])[1]:
                continue
            wins, total = counts[(name, run)]
            rate = wins / total
            low, high = wilson_interval(wins, total)
            y = y0 + gap / 2 + i * bar
            color = COLORS[i % len(COLORS)]
            parts.append(
                f'<rect x="{left}" y="{y + 1}" width="{width * rate:.1f}" height="{bar - 2}" fill="{color}">'
                f"<title>{esc(run)} · {esc(name)}: {wins}/{total} = {pct(rate)} (95% CI {pct(low)}-{pct(high)})"
                f"</title></rect>"
                f'<line x1="{left + width * low:.1f}" x2="{left + width * high:.1f}" y1="{y + bar / 2}" '
                f'y2="{y + bar / 2}" stroke="#333" stroke-width="1.2"/>'
                f'<line x1="{left + width * low:.1f}" x2="{left + width * low:.1f}" y1="{y + 3}" y2="{y + bar - 3}" '
                f'stroke="#333"/><line x1="{left + width * high:.1f}" x2="{left + width * high:.1f}" y1="{y + 3}" '
                f'y2="{y + bar - 3}" stroke="#333"/>'
                f'<text x="{left + width * high + 5:.1f}" y="{y + bar / 2}" dominant-baseline="middle">'
                f"{pct(rate)} ({wins}/{total})</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


# -- the home page -------------------------------------------------------------------------------------------


def home(store: Store) -> str:
    body = ["<h1>Runs and checkpoints</h1>"]
    for root in store.roots:
        problem = store.root_problem(root)
        if problem:
            body.append(
                f'<div class="problem" id="root-problem-{root.index}">--{esc(root.label)}: {esc(problem)}</div>'
            )
    recordings = store.recordings()
    body.append("<h2>Recorded runs</h2>")
    if not recordings:
        body.append(
            '<p class="muted" id="no-runs">No recorded episodes yet. Evaluations record every episode '
            "(<code>browser-control evaluate ... --output DIR</code>); training records a sample of rollouts "
            "every <code>record_every_steps</code> steps under <code>CHECKPOINT_DIR/runs/NAME</code>. Looked "
            f"in {esc(store.describe_roots())}.</p>"
        )
    else:
        body.append(
            '<table id="runs"><tr><th>recording</th><th>kind</th><th>runs</th><th>tasks</th>'
            "<th>episodes</th><th>success</th><th>step by step</th><th>updated</th><th>problems</th></tr>"
        )
        for r in sorted(recordings, key=lambda r: -r.modified):
            scored = [row for row in r.rows if row.ended_by != NO_DATA]
            wins = sum(row.success for row in scored)
            traced = sum(row.trace is not None for row in r.rows)
            rate = f"{pct(wins / len(scored))} ({wins}/{len(scored)})" if scored else "–"
            problems = f'<span class="err">{len(r.problems)}</span>' if r.problems else ""
            body.append(
                f'<tr><td><a href="{esc(url("/run", r=r.key))}">{esc(r.name)}</a><div class="muted">'
                f"--{esc(r.root.label)}</div></td><td>{esc(r.kind)}</td><td>{esc(', '.join(r.runs[:4]))}"
                f"{' …' if len(r.runs) > 4 else ''}</td><td>{len(r.tasks)}</td><td>{len(r.rows)}</td><td>{rate}</td>"
                f"<td>{traced}</td><td>{when(r.modified)}</td><td>{problems}</td></tr>"
            )
        body.append("</table>")
    checkpoints = store.checkpoints()
    if any(root.label == "checkpoints" for root in store.roots):
        body.append("<h2>Checkpoints</h2>")
        if not checkpoints:
            body.append('<p class="muted">No finished checkpoint in the checkpoints directory.</p>')
        else:
            body.append(
                '<table id="checkpoints"><tr><th>checkpoint</th><th>date</th><th>size</th><th>steps</th>'
                "<th>training success (recent)</th><th>evaluation</th><th>training episodes</th></tr>"
            )
            for c in checkpoints:
                m = c.metrics or {}
                recent = (m.get("recent") or {}).get("success/overall") if isinstance(m.get("recent"), dict) else None
                body.append(
                    f"<tr><td>{esc(c.name)}{f'<div class=err>{esc(c.problem)}</div>' if c.problem else ''}</td>"
                    f"<td>{when(c.modified)}</td><td>{size(c.size_bytes)}</td><td>{esc(m.get('global_step', ''))}</td>"
                    f"<td>{pct(recent) if isinstance(recent, int | float) else '–'}</td>"
                    f"<td>{_link('/run', 'report', r=c.evaluation_key) if c.evaluation_key else '–'}</td>"
                    f"<td>{_link('/run', 'episodes', r=c.training_key) if c.training_key else '–'}</td></tr>"
                )
            body.append("</table>")
    if recordings:
        body.append(compare_form(recordings))
    return layout("Runs", "".join(body))


def _link(path: str, text: str, **params: Any) -> str:
    return f'<a href="{esc(url(path, **params))}">{esc(text)}</a>'


def compare_form(recordings: Sequence[Recording], a: str = "", b: str = "") -> str:
    options = []
    for r in recordings:
        for run in r.runs:
            value = f"{r.key}|{run}"
            options.append((value, f"{r.name} · {run}"))
    if len(options) < 2:
        return ""

    def select(name: str, chosen: str, default: int) -> str:
        items = "".join(
            f'<option value="{esc(v)}"{" selected" if v == chosen or (not chosen and i == default) else ""}>'
            f"{esc(label)}</option>"
            for i, (v, label) in enumerate(options)
        )
        return f'<select name="{name}">{items}</select>'

    return (
        '<h2>Compare two runs on the same task and seed</h2><form class="filters" action="/compare" '
        f'id="compare-form"><label>left{select("a", a, 0)}</label><label>right{select("b", b, 1)}</label>'
        '<button type="submit">compare</button></form>'
    )


# -- one recording -------------------------------------------------------------------------------------------

FILTERS = ("run", "task", "outcome", "errors", "seed", "step")


def filter_rows(rows: Sequence[EpisodeRow], params: dict[str, str]) -> list[EpisodeRow]:
    out = list(rows)
    if params.get("run"):
        out = [r for r in out if r.run == params["run"]]
    if params.get("task"):
        out = [r for r in out if r.task == params["task"]]
    if params.get("outcome") in ("success", "failure"):
        want = params["outcome"] == "success"
        out = [r for r in out if r.success == want]
    if params.get("errors") == "with":
        out = [r for r in out if r.invalid_actions]
    elif params.get("errors") == "without":
        out = [r for r in out if not r.invalid_actions]
    if params.get("traced") == "yes":
        out = [r for r in out if r.trace]
    for key, attr in (("seed", "seed"), ("step", "training_step")):
        if params.get(key):
            try:
                value = int(params[key])
            except ValueError:
                raise ViewerError(400, "Bad filter", f"{key} must be a whole number, got {params[key]!r}") from None
            out = [r for r in out if getattr(r, attr) == value]
    return out


def run_page(store: Store, recording: Recording, params: dict[str, str]) -> str:
    rows = filter_rows(recording.rows, params)
    try:
        page = max(1, int(params.get("page") or 1))
    except ValueError:
        raise ViewerError(400, "Bad page", f"page must be a whole number, got {params.get('page')!r}") from None
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(page, pages)
    shown = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    body = [
        f"<h1>{esc(recording.name)} <span class='badge'>{esc(recording.kind)}</span></h1>",
        f'<p class="muted">{esc(recording.path)}</p>',
    ]
    for problem in recording.problems:
        body.append(f'<div class="problem">{esc(problem)}</div>')
    if recording.report:
        settings = ((recording.report.get("runs") or [{}])[0] or {}).get("settings") or {}
        if isinstance(settings, dict) and settings.get("seeds"):
            body.append(
                f'<p class="muted">evaluation seeds {esc(settings.get("seeds"))}, at most '
                f"{esc(settings.get('max_episode_steps', settings.get('max_steps')))} actions per episode</p>"
            )
    body.append("<h2>Success per task (95% Wilson intervals)</h2>")
    if "chart" not in recording.cache:
        recording.cache["chart"] = success_chart(recording.rows, recording.runs, recording.tasks)
    body.append(recording.cache["chart"])
    body.append("<h2>Episodes</h2>")

    def choice(name: str, values: Sequence[str], label: str) -> str:
        items = "".join(
            f'<option value="{esc(v)}"{" selected" if params.get(name) == v else ""}>{esc(v or "all")}</option>'
            for v in ["", *values]
        )
        return f'<label>{label}<select name="{name}">{items}</select></label>'

    body.append(
        f'<form class="filters" id="filters" action="/run"><input type="hidden" name="r" value="{esc(recording.key)}">'
    )
    if len(recording.runs) > 1:
        body.append(choice("run", recording.runs, "run"))
    body.append(choice("task", sorted(recording.tasks), "task"))
    body.append(choice("outcome", ["success", "failure"], "outcome"))
    body.append(choice("errors", ["with", "without"], "invalid actions"))
    body.append(f'<label>seed<input name="seed" size="11" value="{esc(params.get("seed", ""))}"></label>')
    if recording.kind == "training":
        body.append(f'<label>training step<input name="step" size="6" value="{esc(params.get("step", ""))}"></label>')
        body.append(choice("traced", ["yes"], "step by step only"))
    body.append('<button type="submit">filter</button></form>')
    kept = {k: params.get(k) for k in (*FILTERS, "traced")}
    nav = (
        f'<div class="pager" id="pager"><span id="count">{len(rows)} of {len(recording.rows)} episodes'
        f"</span><span>page {page} of {pages}</span>"
    )
    if page > 1:
        nav += _link("/run", "« previous", r=recording.key, page=page - 1, **kept)
    if page < pages:
        nav += _link("/run", "next »", r=recording.key, page=page + 1, **kept)
    nav += "</div>"
    body.append(nav)
    nav = nav.replace(' id="pager"', "").replace(' id="count"', "")  # the copy under the table
    head = (
        "<tr><th>#</th>"
        + ("<th>run</th>" if len(recording.runs) > 1 else "")
        + ("<th>step</th>" if recording.kind == "training" else "")
        + (
            "<th>task</th><th>seed</th><th>outcome</th><th>ended by</th><th>actions</th><th>invalid</th>"
            "<th>actions taken</th></tr>"
        )
    )
    body.append(f'<table id="episodes">{head}')
    for row in shown:
        cells = f"<td>{_link('/episode', str(row.n), r=recording.key, n=row.n)}</td>"
        if len(recording.runs) > 1:
            cells += f"<td>{esc(row.run)}</td>"
        if recording.kind == "training":
            cells += f"<td>{esc(row.training_step if row.training_step is not None else '')}</td>"
        actions = ", ".join(row.actions[:4]) + (" …" if len(row.actions) > 4 else "")
        trace_mark = "" if row.trace else ' <span class="muted" title="no step-by-step trace">(summary)</span>'
        cells += (
            f"<td>{esc(row.task)}</td><td>{row.seed}</td><td>{outcome(row.success)}{trace_mark}</td>"
            f"<td>{esc(row.ended_by)}</td><td>{row.steps}</td>"
            f"<td>{f'<span class=err>{row.invalid_actions}</span>' if row.invalid_actions else 0}</td>"
            f"<td><code>{esc(actions)}</code></td>"
        )
        body.append(f'<tr class="episode">{cells}</tr>')
    body.append("</table>")
    if not shown:
        body.append('<p class="muted" id="no-episodes">No episode matches these filters.</p>')
    body.append(nav)
    return layout(recording.name, "".join(body), [(recording.name, url("/run", r=recording.key))])


# -- one episode ---------------------------------------------------------------------------------------------

_BID_ARGS = ("bid", "from_bid", "to_bid")


def highlighted_page(text: str, step: TraceStep | None) -> str:
    """The observation text with the line(s) of the element the action targets marked."""
    bids = set()
    if step is not None and isinstance(step.arguments, dict):
        bids = {str(step.arguments[k]) for k in _BID_ARGS if k in step.arguments}
    if not bids:
        return esc(text)
    pattern = re.compile(r"\[(" + "|".join(re.escape(b) for b in bids) + r")\]")
    lines = []
    for line in text.split("\n"):
        lines.append(f"<mark>{esc(line)}</mark>" if pattern.search(line) else esc(line))
    return "\n".join(lines)


def shot_url(recording: Recording, row: EpisodeRow, file_rel: str | None) -> str | None:
    return url("/shot", r=recording.key, n=row.n, f=file_rel) if file_rel else None


def step_card(recording: Recording, row: EpisodeRow, step: TraceStep) -> str:
    answer = []
    if step.error:
        answer.append(f'<div class="err">error: {esc(step.error)}</div>')
    if step.reward is not None:
        answer.append(
            f"<div>reward <b>{step.reward:g}</b>, done {'yes' if step.done else 'no'}"
            f"{', truncated' if step.truncated else ''}</div>"
        )
    if step.action and not step.reached_service:
        answer.append('<div class="muted">not sent to the service</div>')
    shot = shot_url(recording, row, step.screenshot)
    image = (
        f'<img class="shot" src="{esc(shot)}" alt="page after step {step.index}">'
        if shot
        else '<p class="muted">no screenshot (record with --screenshots)</p>'
    )
    action = (
        f'<span class="action">{esc(step.action)}</span>'
        if step.action
        else f'<span class="action">{esc(step.tool or "no call")}'
        f"{esc(step.arguments) if step.arguments is not None else ''}</span>"
    )
    output = f"<div><b>model output</b><pre>{esc(step.output)}</pre></div>" if step.output is not None else ""
    return (
        f'<div class="step" id="step-{step.index}"><h3>Step {step.index} {action}</h3>'
        f'<div class="grid"><div>{"".join(answer)}{output}<b>page text the model saw</b>'
        f'<pre class="page">{highlighted_page(step.observation, step)}</pre>'
        f"<details><summary>text returned to the model</summary><pre>{esc(step.result)}</pre></details></div>"
        f"<div><b>page after the action</b><br>{image}</div></div></div>"
    )


def episode_header(recording: Recording, row: EpisodeRow, trace: EpisodeTrace | None) -> str:
    step = f", training step {row.training_step}" if row.training_step is not None else ""
    goal = f"<p><b>Goal:</b> {esc(trace.goal)}</p>" if trace and trace.goal else ""
    return (
        f"<h1>{esc(row.task)} · seed {row.seed}</h1><p>{outcome(row.success)} · ended by "
        f"{esc(row.ended_by)} · {row.steps} actions · {row.invalid_actions} invalid · run "
        f"<b>{esc(row.run)}</b>{esc(step)}</p>{goal}"
    )


def episode_page(store: Store, recording: Recording, row: EpisodeRow) -> str:
    body = []
    trace: EpisodeTrace | None = None
    problem = None
    try:
        trace = store.trace(recording, row)
    except ViewerError as exc:
        problem = exc
    body.append(episode_header(recording, row, trace))
    if problem is not None:
        note = problem.message
        if row.trace is None and recording.kind == "training":
            note += " (training records a sample of rollouts every record_every_steps steps)"
        body.append(f'<div class="problem" id="no-trace">{esc(problem.title)}: {esc(note)}</div>')
        if row.actions:
            body.append("<h2>Actions</h2><pre>" + esc("\n".join(row.actions)) + "</pre>")
    others = [(r, o) for r, o in store.instances(row.task, row.seed) if (r.key, o.run) != (recording.key, row.run)]
    if others:
        links = []
        seen = set()
        for r, o in others:
            if (r.key, o.run) in seen:
                continue
            seen.add((r.key, o.run))
            links.append(
                f"<li>{_link('/compare', f'{r.name} · {o.run}', a=f'{recording.key}|{row.run}', b=f'{r.key}|{o.run}', task=row.task, seed=row.seed)}"  # noqa: E501
                f" – {outcome(o.success)}</li>"
            )
        body.append(f'<h2>The same task and seed elsewhere</h2><ul id="elsewhere">{"".join(links[:30])}</ul>')
    if trace is not None:
        first = shot_url(recording, row, trace.first_screenshot)
        body.append(
            '<div class="step" id="step-0"><h3>Start</h3><div class="grid"><div><b>first page text</b>'
            f'<pre class="page">{esc(trace.first_observation)}</pre></div><div><b>first page</b><br>'
            + (
                f'<img class="shot" src="{esc(first)}" alt="first page">'
                if first
                else '<p class="muted">no screenshot</p>'
            )
            + "</div></div></div>"
        )
        if not trace.steps:
            body.append('<p class="muted">The model made no tool call.</p>')
        for step in trace.steps:
            body.append(step_card(recording, row, step))
    crumbs = [
        (recording.name, url("/run", r=recording.key)),
        (f"episode {row.n}", url("/episode", r=recording.key, n=row.n)),
    ]
    return layout(f"{row.task} {row.seed}", "".join(body), crumbs)


# -- side by side --------------------------------------------------------------------------------------------


def _split(value: str) -> tuple[str, str]:
    key, sep, run = (value or "").partition("|")
    if not sep:
        raise ViewerError(400, "Bad comparison", f"{value!r} does not name a run (expected RECORDING|RUN)")
    return key, run


def compare_page(store: Store, params: dict[str, str]) -> str:
    (key_a, run_a), (key_b, run_b) = _split(params.get("a", "")), _split(params.get("b", ""))
    rec_a, rec_b = store.recording(key_a), store.recording(key_b)
    rows_a = [r for r in rec_a.rows if r.run == run_a]
    rows_b = [r for r in rec_b.rows if r.run == run_b]
    for rec, run, rows in ((rec_a, run_a, rows_a), (rec_b, run_b, rows_b)):
        if not rows:
            raise ViewerError(
                404,
                "No such run",
                f"{rec.name} has no run named {run!r}; it has {', '.join(rec.runs) or 'no episodes'}",
            )
    title = f"{rec_a.name} · {run_a}  vs  {rec_b.name} · {run_b}"
    crumbs = [("compare", url("/compare", a=params["a"], b=params["b"]))]
    if not params.get("task"):
        index_b: dict[tuple[str, int], EpisodeRow] = {}
        for r in rows_b:
            index_b.setdefault((r.task, r.seed), r)
        pairs = []
        seen = set()
        for r in rows_a:
            other = index_b.get((r.task, r.seed))
            if other is not None and (r.task, r.seed) not in seen:
                seen.add((r.task, r.seed))
                pairs.append((r, other))
        pairs.sort(key=lambda p: (p[0].success == p[1].success, p[0].task, p[0].seed))
        body = [f"<h1>{esc(title)}</h1>", compare_form(store.recordings(), params["a"], params["b"])]
        label_a, label_b = f"left: {rec_a.name} · {run_a}", f"right: {rec_b.name} · {run_b}"
        both = [replace(r, run=label_a) for r in rows_a] + [replace(r, run=label_b) for r in rows_b]
        tasks = list(dict.fromkeys(r.task for r in both))
        body.append("<h2>Success per task (95% Wilson intervals)</h2>" + success_chart(both, [label_a, label_b], tasks))
        if not pairs:
            body.append(
                '<div class="problem" id="no-pairs">These two runs share no task and seed: evaluations '
                "of different checkpoints share them when run with the same --seed-offset.</div>"
            )
        else:
            body.append(
                f"<p>{len(pairs)} task instances played by both; those with different outcomes first.</p>"
                '<table id="pairs"><tr><th>task</th><th>seed</th><th>left</th><th>right</th><th></th></tr>'
            )
            for a, b in pairs[:500]:
                side = _link("/compare", "side by side", a=params["a"], b=params["b"], task=a.task, seed=a.seed)
                body.append(
                    f"<tr><td>{esc(a.task)}</td><td>{a.seed}</td><td>{outcome(a.success)}</td>"
                    f"<td>{outcome(b.success)}</td><td>{side}</td></tr>"
                )
            body.append("</table>")
        return layout("compare", "".join(body), crumbs)
    task = params["task"]
    try:
        seed = int(params.get("seed") or "")
    except ValueError:
        raise ViewerError(400, "Bad comparison", f"seed must be a whole number, got {params.get('seed')!r}") from None

    def pick(rec: Recording, rows: list[EpisodeRow], run: str) -> EpisodeRow:
        matches = [r for r in rows if r.task == task and r.seed == seed]
        if not matches:
            raise ViewerError(404, "Not played", f"{rec.name} · {run} has no episode of {task} with seed {seed}")
        return next((r for r in matches if r.trace), matches[0])

    row_a, row_b = pick(rec_a, rows_a, run_a), pick(rec_b, rows_b, run_b)
    columns = []
    traces = []
    for rec, row in ((rec_a, row_a), (rec_b, row_b)):
        try:
            traces.append(store.trace(rec, row))
        except ViewerError as exc:
            traces.append(exc)
    longest = max((len(t.steps) for t in traces if isinstance(t, EpisodeTrace)), default=0)
    for rec, row, trace in ((rec_a, row_a, traces[0]), (rec_b, row_b, traces[1])):
        col = [
            f"<h2>{_link('/episode', f'{rec.name} · {row.run}', r=rec.key, n=row.n)}</h2>"
            f"<p>{outcome(row.success)} · {row.steps} actions · ended by {esc(row.ended_by)}</p>"
        ]
        if isinstance(trace, ViewerError):
            col.append(f'<div class="problem">{esc(trace.title)}: {esc(trace.message)}</div>')
            col.append("<pre>" + esc("\n".join(row.actions)) + "</pre>")
        else:
            for i in range(longest):
                if i < len(trace.steps):
                    col.append(step_card(rec, row, trace.steps[i]))
                else:
                    col.append('<div class="step muted">(episode already over)</div>')
        columns.append(f'<div class="column">{"".join(col)}</div>')
    goal = next((t.goal for t in traces if isinstance(t, EpisodeTrace) and t.goal), "")
    body = (
        f"<h1>{esc(task)} · seed {seed}</h1>"
        + (f"<p><b>Goal:</b> {esc(goal)}</p>" if goal else "")
        + f'<div class="side" id="side-by-side">{"".join(columns)}</div>'
    )
    return layout(f"{task} {seed}", body, crumbs)
