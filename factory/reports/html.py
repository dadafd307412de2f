"""The report as one self-contained HTML page: Plotly charts and plain tables, nothing fetched.

Plotly was chosen over Vega-Lite (Altair) because its Python package carries the whole
plotly.js bundle, so the page inlines it and opens offline with no second package; its
charts are SVG, so a browser test can see that each one drew. Every text that comes from
the warehouse (names, rows, reasons) is escaped for HTML, and chart data goes through
Plotly's JSON, which escapes `</script>`.
"""

from __future__ import annotations

import html
import itertools
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2933; margin: 0; background: #f5f7fa; }
header { background: #243b53; color: white; padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; opacity: .85; }
main { padding: 8px 32px 40px; max-width: 1200px; }
section { background: white; border-radius: 8px; padding: 16px 20px; margin: 16px 0; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
h2 { font-size: 17px; margin: 0 0 10px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 12px; }
.kpis { display: flex; gap: 24px; flex-wrap: wrap; }
.kpi b { display: block; font-size: 22px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e4e7eb; vertical-align: top; }
th { background: #f0f4f8; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #627d98; }
details summary { cursor: pointer; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else _e(value)


def _table(rows: list[dict[str, Any]], columns: list[str], caption: str = "", table_id: str = "") -> str:
    if not rows:
        return f'<p class="muted">{_e(caption or "nothing to show")}: none.</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_num(r.get(c))}</td>'
            if isinstance(r.get(c), int | float)
            else f"<td>{_e(r.get(c))}</td>"
            for c in columns
        )
        + "</tr>"
        for r in rows
    )
    ident = f' id="{_e(table_id)}"' if table_id else ""
    cap = f"<caption class='muted'>{_e(caption)}</caption>" if caption else ""
    return f"<table{ident}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(fig: go.Figure, chart_id: str, height: int = 320) -> str:
    fig.update_layout(height=height, margin={"l": 40, "r": 20, "t": 40, "b": 40}, template="plotly_white")
    return (
        f'<div class="chart" data-chart="{_e(chart_id)}">'
        + fig.to_html(
            full_html=False, include_plotlyjs=False, div_id=f"chart-{chart_id}", config={"displaylogo": False}
        )
        + "</div>"
    )


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{_e(title)}</h2>" + "".join(parts) + "</section>"


def _empty(title: str, text: str) -> str:
    return _section(title, f"<p class='muted'>{_e(text)}</p>")


def _bars(rows: list[dict[str, Any]], title: str, chart_id: str) -> str:
    top = rows[:20]
    fig = go.Figure(
        go.Bar(x=[r["rows"] for r in top][::-1], y=[str(r["value"]) for r in top][::-1], orientation="h")
    )
    fig.update_layout(title=title + (f" (top 20 of {len(rows)})" if len(rows) > 20 else ""))
    return _figure(fig, chart_id, height=max(220, 40 + 22 * len(top)))


def render(facts: dict[str, Any]) -> str:
    """The report page for the facts of `factory.reports.facts.gather`."""
    snap = facts["snapshot"]
    parts = [
        _summary(facts),
        _counts(facts),
        _lengths(facts),
        _funnel(facts),
        _clusters(facts),
        _lineage(facts),
    ]
    parts += [_teacher(facts), _runs(facts)]
    if facts.get("compare"):
        parts.append(_compare(facts))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        + (
            f"<meta name='factory-recipe-step' content='{_e(facts['recipe_step'])}'>"
            if facts.get("recipe_step")
            else ""
        )
        + f"<title>Snapshot {_e(snap['name'])}: instruction-factory report</title>"
        f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
        + "".join(parts)
        + "</main></body></html>"
    )


def _summary(facts: dict[str, Any]) -> str:
    snap, recipe = facts["snapshot"], facts.get("recipe")
    made = (
        f"<p>made by recipe <b>{_e(recipe['recipe'])}</b>, step <b>{_e(recipe['step'])}</b> ({_e(recipe['path'])})</p>"
        if recipe
        else ""
    )
    where = f"<p>where: <code>{_e(snap['where_sql'])}</code></p>" if snap.get("where_sql") else ""
    funnel = facts["funnel"]
    runs = facts["runs"]
    calls = sum(t["calls"] for t in facts["teacher"])
    return (
        f"<header><h1>Snapshot {_e(snap['name'])}</h1>"
        f"<p>{_e(snap['message'] or '')}</p>"
        f"<p>digest {_e(snap['digest'])} · parent {_e(snap['parent'] or '-')} · created {_e(snap['created_at'])} by "
        f"{_e(snap['author'])} · warehouse version {_e(snap['lake_version'])}</p>{made}{where}</header><main>"
        "<section><div class='kpis'>"
        f"<div class='kpi'><b id='kpi-rows'>{snap['row_count']:,}</b>rows</div>"
        f"<div class='kpi'><b id='kpi-start'>{funnel['start']:,}</b>rows in the warehouse then</div>"
        f"<div class='kpi'><b id='kpi-filters'>{len(funnel['filters'])}</b>filters honoured</div>"
        f"<div class='kpi'><b id='kpi-calls'>{calls:,}</b>teacher calls</div>"
        f"<div class='kpi'><b id='kpi-runs'>{len(runs)}</b>training / evaluation runs</div>"
        "</div></section>"
    )


def _counts(facts: dict[str, Any]) -> str:
    charts = "".join(
        _bars(facts["counts"][column], f"rows by {column}", f"by-{column}")
        for column in ("source", "generator", "domain", "language")
    )
    tables = "".join(
        f"<details><summary>rows by {column} (table)</summary>"
        + _table(facts["counts"][column], ["value", "rows"], table_id=f"table-by-{column}")
        + "</details>"
        for column in ("source", "generator", "domain", "language", "kind")
    )
    return f"<section><h2>What is in it</h2><div class='grid'>{charts}</div>{tables}</section>"


def _lengths(facts: dict[str, Any]) -> str:
    lengths = facts["lengths"]
    if lengths is None:
        return ""
    charts, rows = [], []
    for field in ("instruction", "output"):
        d = lengths[field]
        edges = d["edges"]
        labels = [
            f"{a}-{b}" + ("+" if k == len(edges) - 2 else "")
            for k, (a, b) in enumerate(itertools.pairwise(edges))
        ]
        fig = go.Figure(go.Bar(x=labels, y=d["counts"]))
        fig.update_layout(title=f"{field} length in tokens", xaxis_title="tokens", yaxis_title="rows")
        fig.update_xaxes(type="category")  # "2-3" is a range of tokens, not a date
        charts.append(_figure(fig, f"length-{field}"))
        rows.append(
            {"field": field, **{k: d[k] for k in ("p50", "p90", "p99", "max")}, "mean": round(d["mean"], 1)}
        )
    sampled = (
        f" (measured on a sample of {lengths['measured']:,} of {lengths['rows']:,} rows)"
        if lengths["measured"] < lengths["rows"]
        else ""
    )
    return (
        f"<section><h2>Lengths</h2><p class='muted'>tokens of the {_e(lengths['tokenizer'])} tokenizer; the "
        f"instruction includes its input{sampled}</p><div class='grid'>{''.join(charts)}</div>"
        + _table(rows, ["field", "p50", "p90", "p99", "max", "mean"], table_id="table-lengths")
        + "</section>"
    )


def _funnel(facts: dict[str, Any]) -> str:
    funnel = facts["funnel"]
    stages = ["all rows"] + [f["filter"] for f in funnel["filters"]] + ["snapshot"]
    values = [funnel["start"]] + [f["remaining"] for f in funnel["filters"]] + [funnel["selected"]]
    fig = go.Figure(go.Funnel(y=stages, x=values, textinfo="value+percent initial"))
    fig.update_layout(title="filter funnel, in the order the filters ran")
    details = []
    for f in funnel["filters"]:
        reasons = "".join(
            f"<h4>{_e(r['reason'])}: {r['rows']:,} rows</h4>"
            + _table(r["examples"], ["id", "instruction", "output", "reason"], caption="examples")
            for r in f["reasons"]
        )
        details.append(
            f"<details><summary><b>{_e(f['filter'])}</b>: judged {f['judged']:,}, dropped {f['dropped']:,} of the "
            f"rows still in, {f['remaining']:,} left</summary>{reasons}</details>"
        )
    rows = [{"stage": s, "rows": v} for s, v in zip(stages, values, strict=True)]
    return (
        "<section><h2>Filter funnel</h2>"
        + _figure(fig, "funnel", height=max(260, 60 + 45 * len(stages)))
        + _table(rows, ["stage", "rows"], table_id="table-funnel")
        + "".join(details)
        + "<p class='muted'>The last stage is the snapshot's own selection (parent and where).</p></section>"
    )


def _clusters(facts: dict[str, Any]) -> str:
    clusters = facts["clusters"]
    if not clusters:
        return _empty("Near-duplicate clusters", "No dedup filter dropped a row.")
    fig = go.Figure(
        [
            go.Bar(name=c["filter"], x=[s["size"] for s in c["sizes"]], y=[s["clusters"] for s in c["sizes"]])
            for c in clusters
        ]
    )
    fig.update_layout(title="cluster sizes (a kept row and its dropped copies)", xaxis_title="rows in the cluster",
                      yaxis_title="clusters", barmode="group")  # fmt: skip
    fig.update_xaxes(type="category")
    rows = [{k: c[k] for k in ("filter", "clusters", "rows_in_clusters")} for c in clusters]
    columns = ["filter", "clusters", "rows_in_clusters"]
    return _section(
        "Near-duplicate clusters", _figure(fig, "clusters"), _table(rows, columns, table_id="table-clusters")
    )


def _lineage(facts: dict[str, Any]) -> str:
    edges = facts["lineage"]
    if not edges:
        return _empty("Lineage", "No row of the snapshot was made from another row.")
    names = sorted({e["parent_generator"] for e in edges} | {e["generator"] for e in edges})
    index = {n: k for k, n in enumerate(names)}
    fig = go.Figure(
        go.Sankey(
            node={"label": names, "pad": 18},
            link={
                "source": [index[e["parent_generator"]] for e in edges],
                "target": [index[e["generator"]] for e in edges],
                "value": [e["rows"] for e in edges],
            },
        )
    )
    fig.update_layout(title="which generator made rows from rows of which")
    columns = ["parent_generator", "generator", "rows"]
    return _section("Lineage", _figure(fig, "lineage"), _table(edges, columns, table_id="table-lineage"))


def _teacher(facts: dict[str, Any]) -> str:
    calls = facts["teacher"]
    if not calls:
        return _empty("Teacher cost", "No teacher call made or judged these rows.")
    by_model: dict[str, dict[str, int]] = {}
    for c in calls:
        m = by_model.setdefault(str(c["model"]), {"prompt": 0, "completion": 0})
        m["prompt"] += c["prompt_tokens"]
        m["completion"] += c["completion_tokens"]
    models = sorted(by_model)
    fig = go.Figure(
        [
            go.Bar(name="prompt tokens", x=models, y=[by_model[m]["prompt"] for m in models]),
            go.Bar(name="completion tokens", x=models, y=[by_model[m]["completion"] for m in models]),
        ]
    )
    fig.update_layout(title="tokens by model", barmode="stack")
    columns = ["model", "plugin", "job_id", "calls", "prompt_tokens", "completion_tokens", "failures"]
    return _section("Teacher cost", _figure(fig, "teacher"), _table(calls, columns, table_id="table-teacher"))


def _runs(facts: dict[str, Any]) -> str:
    runs = facts["runs"]
    if not runs:
        return _empty("Training and evaluation", "No run on this snapshot yet.")
    out = ["<section><h2>Training and evaluation</h2>"]
    if len(runs) > 1:
        out.append(_side_by_side(runs))
    for run in runs:
        rows = [
            {"": label, **(values or {})}
            for label, values in (("before", run["before"]), ("after", run["after"]))
            if values
        ]
        out.append(
            f"<h3>{_e(run['trainer'])} {_e(run['method'] or '')} · run {_e(run['id'])} · {_e(run['status'])}</h3>"
        )
        out.append(
            _table(
                rows,
                ["", "loss", "perplexity", "rouge_l", "bleu", "similarity", "instructions_followed"],
                table_id=f"table-run-{run['id']}",
            )
        )
        domains = [d for d in run["per_domain"] if d["after"].get("loss") is not None]
        if domains:
            fig = go.Figure(
                [
                    go.Bar(
                        name="before",
                        x=[d["domain"] for d in domains],
                        y=[d["before"].get("loss") for d in domains],
                    ),
                    go.Bar(
                        name="after",
                        x=[d["domain"] for d in domains],
                        y=[d["after"].get("loss") for d in domains],
                    ),
                ]
            )
            fig.update_layout(title="eval loss per domain, before and after", barmode="group")
            out.append(_figure(fig, f"run-{run['id']}"))
    return "".join(out) + "</section>"


def _side_by_side(runs: list[dict[str, Any]]) -> str:
    """Every run's numbers after training (or of its evaluation) in one table, and the held-out loss per
    domain of every run in one chart: several seeds and training sets read at a glance."""
    columns = ["loss", "rouge_l", "similarity", "instructions_followed"]
    rows = [
        {"run": run["id"], "trainer": run["trainer"], "model": run["model"] or "",
         "settings": ", ".join(f"{k}={v}" for k, v in run["settings"].items()),
         **{k: (run["after"] or {}).get(k) for k in columns}}
        for run in runs
    ]  # fmt: skip
    parts = [
        "<h3>All runs side by side</h3>",
        _table(rows, ["run", "trainer", "model", "settings", *columns], table_id="table-runs"),
    ]
    domains = sorted(
        {d["domain"] for run in runs for d in run["per_domain"] if d["after"].get("loss") is not None}
    )
    if domains:
        fig = go.Figure(
            [
                go.Bar(name=run["id"], x=domains,
                       y=[next((d["after"].get("loss") for d in run["per_domain"] if d["domain"] == name), None)
                          for name in domains])
                for run in runs
            ]
        )  # fmt: skip
        fig.update_layout(title="held-out loss per domain, every run", barmode="group")
        parts.append(_figure(fig, "runs-side-by-side"))
    return "".join(parts)


def _compare(facts: dict[str, Any]) -> str:
    c = facts["compare"]
    other, name = c["other"], facts["snapshot"]["name"]
    return (
        f"<section><h2>Compared with {_e(other)}</h2><p>going from {_e(other)} to {_e(name)}: "
        f"<b id='compare-added'>+{c['added']:,}</b> rows added, <b id='compare-removed'>-{c['removed']:,}</b> removed</p>"
        + _table(c["by_source"], ["source", other, name], caption="rows by source", table_id="table-compare")
        + _table(c["added_examples"], ["id", "instruction", "source"], caption="some rows added")
        + _table(c["removed_examples"], ["id", "instruction", "source"], caption="some rows removed")
        + "</section>"
    )
