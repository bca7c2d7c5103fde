"""The dashboard's HTML, rendered on the server (every value escaped here, and nowhere
else); `static/dashboard.js` only refreshes numbers and draws the charts."""

from __future__ import annotations

import base64
import dataclasses
import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from feedwork.types import DeadPage, QueueStats, Stats, TaskInfo, TaskPage, Totals, Workers

# Every running total, in the order Totals declares them.
TOTAL_FIELDS = tuple(f.name for f in dataclasses.fields(Totals))
NAV = '<a href="/workers">Workers</a>'
STATE_FIELDS = ("ready", "scheduled", "leased", "completed", "dead", "cancelled")


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def q(value: str) -> str:
    """A path segment."""
    return quote(value, safe="")


def when(value: datetime | None) -> str:
    if value is None:
        return '<span class="muted">-</span>'
    text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
    return f'<time datetime="{e(value.isoformat())}">{e(text)}</time>'


def age(seconds: float) -> str:
    if seconds <= 0:
        return "0"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def blob(data: bytes) -> str:
    """Bytes shown as text when they are UTF-8, else as base64 (said so)."""
    if not data:
        return '<span class="muted">(empty)</span>'
    try:
        return f'<pre class="block">{e(data.decode("utf-8"))}</pre>'
    except UnicodeDecodeError:
        encoded = base64.b64encode(data).decode()
        note = f'<span class="muted">base64, {len(data)} bytes</span>'
        return f'<pre class="block">{e(encoded)}</pre>{note}'


def layout(
    title: str,
    body: str,
    *,
    who: str = "",
    flash: tuple[str, bool] | None = None,
    poll: str | None = None,
    csrf: str = "",
) -> str:
    """A whole page. `poll`: the queue whose stats the script keeps current ("" for every
    queue, None for none)."""
    poll_attr = "" if poll is None else f' data-poll="{e(poll)}"'
    message = ""
    if flash is not None:
        text, ok = flash
        message = f'<div class="flash{"" if ok else " error"}" role="status">{e(text)}</div>'
    logout = ""
    if who:
        logout = (
            f'<span class="who">{e(who)} <form class="inline" method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            '<button type="submit">log out</button></form></span>'
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · feedwork</title>
<link rel="stylesheet" href="/static/dashboard.css">
<link rel="icon" href="data:,">
</head>
<body{poll_attr}>
<header><a class="brand" href="/">feedwork</a><a href="/">Queues</a>{NAV}{logout}</header>
<main>
{message}
{body}
</main>
<script src="/static/dashboard.js"></script>
</body>
</html>
"""


def spark(queue: str) -> str:
    return (
        f'<svg class="spark" viewBox="0 0 120 24" data-queue="{e(queue)}" data-field="spark" '
        'aria-label="ready tasks over time"><polyline stroke="#2457c5" points=""/></svg>'
    )


def paused_badge(paused: bool | None) -> str:
    if not paused:
        return ""
    return ' <span class="badge paused" title="takes submits, hands out nothing">paused</span>'


def queues_page(stats: Stats, paused: dict[str, bool]) -> str:
    rows = []
    for queue in stats.queues:
        cells = "".join(
            f'<td class="num" data-queue="{e(queue.queue)}" data-field="{f}">'
            f"{getattr(queue, f):,}</td>"
            for f in STATE_FIELDS
        )
        rows.append(
            f'<tr data-row="{e(queue.queue)}"><td><a href="/queues/{q(queue.queue)}">'
            f"{e(queue.queue)}</a>{paused_badge(paused.get(queue.queue))}</td>{cells}"
            f'<td class="num" data-queue="{e(queue.queue)}" data-field="oldest">'
            f"{age(queue.oldest_ready_age.total_seconds())}</td>"
            f'<td class="num" data-queue="{e(queue.queue)}" data-field="rate-submitted">…</td>'
            f'<td class="num" data-queue="{e(queue.queue)}" data-field="rate-completed">…</td>'
            f'<td class="num" data-queue="{e(queue.queue)}" data-field="rate-failed">…</td>'
            f"<td>{spark(queue.queue)}</td></tr>"
        )
    head = "".join(f'<th class="num">{f}</th>' for f in STATE_FIELDS)
    table = (
        f'<table id="queues"><thead><tr><th>queue</th>{head}'
        '<th class="num">oldest ready</th><th class="num">submitted/s</th>'
        '<th class="num">completed/s</th><th class="num">failed/s</th><th>ready, 3 min</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    if not stats.queues:
        table = '<p class="muted">No queues yet: submit a task and it appears here.</p>'
    totals = stats.totals
    return (
        '<h1>Queues <span id="updated" class="muted" style="font-size:12px"></span></h1>'
        f"{table}"
        f'<p class="muted">Since each queue was made: {totals.submitted:,} submitted, '
        f"{totals.completed:,} completed, {totals.failed:,} failures, {totals.expired:,} "
        f"expired leases, {totals.dead_lettered:,} dead-lettered.</p>"
    )


STATES = ("READY", "SCHEDULED", "LEASED", "COMPLETED", "DEAD", "CANCELLED")


def pause_controls(queue: str, paused: bool | None, *, csrf: str) -> str:
    """Pause or resume (both when the key may not see whether the queue is paused)."""
    token = f'<input type="hidden" name="csrf" value="{e(csrf)}">'
    buttons = []
    if paused is not True:
        buttons.append(
            f'<form class="inline" method="post" action="/queues/{q(queue)}/pause" '
            f'data-confirm="Pause {e(queue)}? It takes submits and hands out nothing.">{token}'
            '<button type="submit" id="pause">pause</button></form>'
        )
    if paused is not False:
        buttons.append(
            f'<form class="inline" method="post" action="/queues/{q(queue)}/resume">{token}'
            '<button type="submit" class="primary" id="resume">resume</button></form>'
        )
    return " ".join(buttons)


def task_browser(queue: str, page: TaskPage, *, state: str, newest: bool) -> str:
    def link(label: str, **changes: str) -> str:
        params = {"state": state, "order": "newest" if newest else "oldest", **changes}
        query = "&".join(f"{k}={quote(v)}" for k, v in params.items() if v)
        return f'<a href="/queues/{q(queue)}?{query}#tasks">{e(label)}</a>'

    states = " · ".join(
        f"<strong>{e(label.lower())}</strong>"
        if value == state
        else link(label.lower(), state=value)
        for label, value in (("all", ""), *((s, s) for s in STATES))
    )
    order = link("oldest first", order="oldest") if newest else "<strong>oldest first</strong>"
    order += " · " + (
        "<strong>newest first</strong>" if newest else link("newest first", order="newest")
    )
    rows = "".join(
        f'<tr data-task="{e(t.task_id)}">'
        f'<td><a href="/tasks/{q(t.task_id)}">{e(t.task_id)}</a></td>'
        f'<td><span class="state {e(t.state)}">{e(t.state)}</span></td>'
        f'<td class="num">{t.attempts}</td><td>{when(t.created_at)}</td>'
        f"<td>{when(t.finished_at)}</td></tr>"
        for t in page.tasks
    )
    more = ""
    if page.next_page_token:
        more = "<p>" + link("next page →", page=page.next_page_token) + "</p>"
    table = (
        '<table id="tasks-table"><thead><tr><th>task</th><th>state</th>'
        '<th class="num">attempts</th>'
        f"<th>created</th><th>finished</th></tr></thead><tbody>{rows}</tbody></table>"
        if page.tasks
        else '<p class="muted" id="no-tasks">No task here.</p>'
    )
    return (
        f'<h2 id="tasks">Tasks</h2><div class="bar filters">{states}</div>'
        f'<div class="bar filters">{order}</div>{table}{more}'
    )


def queue_page(
    stats: QueueStats,
    dead: DeadPage,
    tasks: TaskPage,
    *,
    paused: bool | None,
    state: str,
    newest: bool,
    csrf: str,
) -> str:
    name = stats.queue
    fields = "".join(
        f'<dt>{f}</dt><dd data-queue="{e(name)}" data-field="{f}">{getattr(stats, f):,}</dd>'
        for f in STATE_FIELDS
    )
    totals = stats.totals
    chart = (
        f'<svg class="chart" viewBox="0 0 600 160" preserveAspectRatio="none" '
        f'data-queue="{e(name)}" data-field="chart" aria-label="ready and leased tasks">'
        '<polyline data-series="ready" stroke="#2457c5" points=""/>'
        '<polyline data-series="leased" stroke="#e08a00" points=""/></svg>'
        '<div class="legend"><span style="color:#2457c5">■ ready</span>'
        '<span style="color:#e08a00">■ leased</span>'
        f'<span class="muted" data-queue="{e(name)}" data-field="chart-max"></span></div>'
    )
    rates = "".join(
        f'<dt>{label}</dt><dd data-queue="{e(name)}" data-field="rate-{key}">…</dd>'
        for key, label in (
            ("submitted", "submitted/s"),
            ("completed", "completed/s"),
            ("failed", "failures/s"),
            ("expired", "expired/s"),
        )
    )
    return (
        f"<h1>Queue {e(name)}{paused_badge(paused)} {pause_controls(name, paused, csrf=csrf)} "
        '<span id="updated" class="muted" style="font-size:12px"></span></h1>'
        f"{chart}"
        f'<h2>Now</h2><dl class="fields">{fields}'
        f'<dt>oldest ready</dt><dd data-queue="{e(name)}" data-field="oldest">'
        f"{age(stats.oldest_ready_age.total_seconds())}</dd>{rates}</dl>"
        f'<h2>Since the queue was made</h2><dl class="fields">'
        + "".join(
            f"<dt>{k.replace('_', ' ')}</dt><dd>{getattr(totals, k):,}</dd>" for k in TOTAL_FIELDS
        )
        + "</dl>"
        + task_browser(name, tasks, state=state, newest=newest)
        + dead_section(name, dead, csrf=csrf)
    )


def dead_section(queue: str, page: DeadPage, *, csrf: str) -> str:
    token = f'<input type="hidden" name="csrf" value="{e(csrf)}">'
    if not page.tasks:
        return '<h2>Dead letters</h2><p class="muted" id="no-dead">None.</p>'
    rows = []
    for task in page.tasks:
        error = task.history[-1].error if task.history else ""
        rows.append(
            f'<tr data-task="{e(task.task_id)}"><td><a href="/tasks/{q(task.task_id)}">'
            f'{e(task.task_id)}</a></td><td class="num">{task.attempts}</td>'
            f"<td>{when(task.finished_at)}</td><td><pre>{e(error[:300])}</pre></td><td>"
            f'<form class="inline" method="post" action="/queues/{q(queue)}/dead/redrive">'
            f'{token}<input type="hidden" name="task_id" value="{e(task.task_id)}">'
            '<button type="submit">redrive</button></form> '
            f'<form class="inline" method="post" action="/queues/{q(queue)}/dead/purge" '
            f'data-confirm="Delete task {e(task.task_id)} for good?">'
            f'{token}<input type="hidden" name="task_id" value="{e(task.task_id)}">'
            '<button type="submit" class="danger">purge</button></form></td></tr>'
        )
    more = ""
    if page.next_page_token:
        more = (
            f'<p><a href="/queues/{q(queue)}?dead_page={quote(page.next_page_token)}">'
            "older dead tasks →</a></p>"
        )
    return (
        '<h2>Dead letters</h2><div class="bar">'
        f'<form class="inline" method="post" action="/queues/{q(queue)}/dead/redrive" '
        f'data-confirm="Put every dead task of {e(queue)} back to ready?">{token}'
        '<button type="submit" class="primary" id="redrive-all">redrive all</button></form>'
        f'<form class="inline" method="post" action="/queues/{q(queue)}/dead/purge" '
        f'data-confirm="Delete every dead task of {e(queue)} for good?">{token}'
        '<button type="submit" class="danger" id="purge-all">purge all</button></form></div>'
        '<table id="dead"><thead><tr><th>task</th><th class="num">attempts</th>'
        "<th>died</th><th>last error</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{more}"
    )


def task_page(task: TaskInfo, *, csrf: str) -> str:
    def row(label: str, value: str) -> str:
        return f"<dt>{e(label)}</dt><dd>{value}</dd>"

    fields = "".join(
        (
            row("queue", f'<a href="/queues/{q(task.queue)}">{e(task.queue)}</a>'),
            row("state", f'<span class="state {e(task.state)}" id="state">{e(task.state)}</span>'),
            row("attempts", f"{task.attempts} ({task.failures} failed) of {task.max_attempts}"),
            row("priority", e(task.priority)),
            row("created", when(task.created_at)),
            row("not before", when(task.not_before)),
            row("lease deadline", when(task.lease_deadline)),
            row("finished", when(task.finished_at)),
            row("idempotency key", f"<code>{e(task.idempotency_key)}</code>"),
        )
    )
    headers = "".join(
        f"<tr><td><code>{e(k)}</code></td><td><code>{e(v)}</code></td></tr>"
        for k, v in sorted(task.headers.items())
    )
    history = "".join(
        f'<tr><td class="num">{a.attempt}</td><td>{e(a.worker_id)}</td><td>{e(a.caller)}</td>'
        f"<td>{when(a.leased_at)}</td><td>{when(a.ended_at)}</td>"
        f'<td><span class="state {e(a.outcome)}">{e(a.outcome)}</span></td>'
        f"<td><pre>{e(a.error)}</pre></td></tr>"
        for a in task.history
    )
    omitted = ""
    if task.attempts_omitted:
        omitted = f'<p class="muted">{task.attempts_omitted} earlier attempts not kept.</p>'
    cancel = ""
    if not task.state.is_settled:
        cancel = (
            f'<form class="inline" method="post" action="/tasks/{q(task.task_id)}/cancel" '
            f'data-confirm="Cancel task {e(task.task_id)}?">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}">'
            '<button type="submit" class="danger" id="cancel">cancel task</button></form>'
        )
    return (
        f"<h1>Task {e(task.task_id)} {cancel}</h1>"
        f'<dl class="fields">{fields}</dl>'
        "<h2>Attempts</h2>"
        '<table id="history"><thead><tr><th class="num">#</th><th>worker</th><th>caller</th>'
        "<th>leased</th><th>ended</th><th>outcome</th><th>error</th></tr></thead>"
        f"<tbody>{history}</tbody></table>{omitted}"
        f'<h2>Result</h2><div id="result">{blob(task.result)}</div>'
        f'<h2>Payload</h2><div id="payload">{blob(task.payload)}</div>'
        + (f"<h2>Headers</h2><table><tbody>{headers}</tbody></table>" if task.headers else "")
    )


def workers_page(workers: Workers) -> str:
    holders = "".join(
        f'<tr><td><a href="/queues/{q(h.queue)}">{e(h.queue)}</a></td><td>{e(h.worker_id)}</td>'
        f'<td>{e(h.caller)}</td><td class="num">{h.leases:,}</td>'
        f"<td>{when(h.oldest_leased_at)}</td><td>{when(h.newest_leased_at)}</td></tr>"
        for h in workers.lease_holders
    )
    consumers = "".join(
        f"<tr><td>{e(c.kind)}</td><td>{e(c.worker_id)}</td><td>{e(c.caller)}</td>"
        f"<td>{e(', '.join(c.queues))}</td><td>{when(c.since)}</td>"
        f'<td class="num">{c.leases:,}</td><td>{e(c.peer)}</td></tr>'
        for c in workers.consumers
    )
    note = '<p class="muted">Lists cut short: there are more.</p>' if workers.truncated else ""
    return (
        "<h1>Workers</h1>"
        "<h2>Holding leases (the database's view: every feeder's)</h2>"
        + (
            '<table id="holders"><thead><tr><th>queue</th><th>worker</th><th>caller</th>'
            '<th class="num">leases</th><th>oldest lease</th><th>newest lease</th></tr></thead>'
            f"<tbody>{holders}</tbody></table>"
            if workers.lease_holders
            else '<p class="muted">No task is leased.</p>'
        )
        + f"<h2>Connected to {e(workers.feeder)} (streams and Lease callers)</h2>"
        + (
            '<table id="consumers"><thead><tr><th>kind</th><th>worker</th><th>caller</th>'
            '<th>queues</th><th>since</th><th class="num">leases</th><th>peer</th></tr></thead>'
            f"<tbody>{consumers}</tbody></table>"
            if workers.consumers
            else '<p class="muted">No worker is connected to this feeder.</p>'
        )
        + note
    )


def login_page(*, error: str = "", csrf: str) -> str:
    message = f'<div class="flash error" role="alert">{e(error)}</div>' if error else ""
    return (
        "<h1>Log in</h1>"
        f"{message}"
        "<p>This feeder asks for an API key. The dashboard acts with yours: what you may see "
        "and do here is what your key may do.</p>"
        '<form method="post" action="/login" class="bar">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        '<input type="password" name="key" id="key" size="48" placeholder="fwk_..." '
        'autocomplete="off" required>'
        '<button type="submit" class="primary">log in</button></form>'
    )


def error_page(status: int, message: str) -> str:
    return f"<h1>{status}</h1><p>{e(message)}</p>"


def stats_json(stats: Stats, names: Sequence[str] | None = None) -> dict[str, object]:
    wanted: Iterable[QueueStats] = stats.queues
    if names:
        wanted = [stats.queue(name) for name in names]
    return {
        "queues": [
            {
                "queue": s.queue,
                **{f: getattr(s, f) for f in STATE_FIELDS},
                "oldest_ready_age": s.oldest_ready_age.total_seconds(),
                "totals": {k: getattr(s.totals, k) for k in TOTAL_FIELDS},
            }
            for s in wanted
        ]
    }
