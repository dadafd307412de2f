"""The facts about a snapshot that its report shows, gathered by SQL into plain JSON-ready values.

One function, `gather`, reads everything the HTML report (factory/reports/html.py), the
JSON report and the Hugging Face dataset card (factory/reports/card.py) say, so the
three never disagree:

- the snapshot's record, and the recipe and step that made it;
- rows by source, generator, domain, language and kind, and the licenses the sources' rows
  carry in their metadata (a `license` field of the imported records);
- instruction and output lengths in tokens of a real tokenizer (quantiles and a histogram);
- the filter funnel: every row of the warehouse at the snapshot's version, then each filter
  whose verdicts the snapshot honoured, in the order they ran, removing the rows it
  dropped that were still in (each reason with its count and three example rows), then
  the snapshot's own selection (parent, where);
- near-duplicate cluster sizes of each dedup filter (a kept row and the rows dropped as
  its copies);
- lineage: which generator made the snapshot's rows from rows made by which;
- teacher cost: calls, tokens and failures by model and job, for the jobs that made the rows
  the warehouse held then (kept or dropped) or judged them;
- the training and evaluation runs on it, before and after, overall and per domain;
- with `compare`, what changed going from another snapshot to this one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from factory.store import snapshots

if TYPE_CHECKING:
    from factory.store.warehouse import Warehouse

EXAMPLES = 3  # example rows shown per drop reason
BINS = 30
TOKENIZE_AT_MOST = 200_000  # rows whose lengths are measured; a larger snapshot is sampled (said so)
DEDUP_REASON = r"^(\w+_duplicate) of ([0-9a-f]{32})"


def gather(
    wh: Warehouse, name: str, compare: str | None = None, tokenizer: str | None = "embedded"
) -> dict[str, Any]:
    """Every fact of the report on snapshot `name` (lengths only with a `tokenizer`)."""
    record = snapshots.get(wh, name)
    rel = f"snapshot('{record['name']}')"
    version = int(record["lake_version"])
    latest = _latest(wh, version, list(record["filter_runs"] or []))
    facts: dict[str, Any] = {
        "snapshot": _record(record),
        "recipe": snapshots.made_by(wh, record),
        "counts": {
            column: _rows(
                wh.sql(
                    f"SELECT coalesce({column}, '(none)') AS value, count(*) AS rows FROM {rel} "
                    "GROUP BY ALL ORDER BY rows DESC, value"
                )
            )
            for column in ("source", "generator", "domain", "language", "kind")
        },
        "lengths": _lengths(wh, rel, tokenizer) if tokenizer else None,
        "licenses": _rows(
            wh.sql(
                f"SELECT json_extract_string(meta, '$.license') AS license, count(*) AS rows FROM {rel} "
                "WHERE json_extract_string(meta, '$.license') IS NOT NULL GROUP BY ALL ORDER BY rows DESC, license"
            )
        ),
        "funnel": _funnel(wh, record, version, latest),
        "clusters": _clusters(latest),
        "lineage": _rows(
            wh.sql(
                f"SELECT p.generator AS parent_generator, c.generator AS generator, count(*) AS rows FROM "
                f"(SELECT generator, unnest(parent_ids) AS parent FROM {rel}) c "
                f"JOIN (SELECT DISTINCT id, generator FROM rows) p ON p.id = c.parent "
                "GROUP BY ALL ORDER BY rows DESC"
            )
        ),
        "teacher": _teacher(wh, version, record),
        "runs": _runs(wh, record),
        "compare": _compare(wh, record["name"], compare) if compare else None,
    }
    return facts


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.write_json()) if frame.height else []


def _record(record: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "name",
        "parent",
        "message",
        "where_sql",
        "row_count",
        "digest",
        "author",
        "created_at",
        "lake_version",
    )
    return {k: (str(record[k]) if k == "created_at" else record[k]) for k in keep}


def _lengths(wh: Warehouse, rel: str, tokenizer: str) -> dict[str, Any]:
    """Token counts of instructions (with their input) and outputs: quantiles and a histogram."""
    from factory.models.loader import load_tokenizer

    total = int(wh.sql(f"SELECT count(*) AS n FROM {rel}")["n"][0])
    sample = f" USING SAMPLE {TOKENIZE_AT_MOST} ROWS (reservoir, 0)" if total > TOKENIZE_AT_MOST else ""
    texts = wh.sql(
        "SELECT concat_ws('\n\n', instruction, nullif(input, '')) AS instruction, output FROM "
        f"(SELECT * FROM {rel}{sample}) ORDER BY 1, 2"
    )
    tok = load_tokenizer(tokenizer)
    out: dict[str, Any] = {"tokenizer": tokenizer, "rows": total, "measured": texts.height}
    for field in ("instruction", "output"):
        values = texts[field].fill_null("").to_list()
        counts = np.array(
            [len(ids) for ids in tok(values, add_special_tokens=False)["input_ids"]] if values else []
        )
        out[field] = _distribution(counts)
    return out


def _distribution(counts: np.ndarray) -> dict[str, Any]:
    if not len(counts):
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0, "edges": [], "counts": []}
    top = max(int(np.percentile(counts, 99)), 1)
    edges = np.unique(np.linspace(0, top, BINS + 1).round().astype(int))
    hist, _ = np.histogram(np.minimum(counts, top), bins=edges)
    return {
        "p50": int(np.percentile(counts, 50)),
        "p90": int(np.percentile(counts, 90)),
        "p99": int(np.percentile(counts, 99)),
        "max": int(counts.max()),
        "mean": float(counts.mean()),
        "edges": edges.tolist(),  # the last bin also holds everything above p99
        "counts": hist.tolist(),
    }


def _latest(wh: Warehouse, version: int, runs: list[str]) -> pl.DataFrame:
    """Each (row, filter)'s latest verdict among the honoured runs, at the snapshot's version (read
    once: the funnel and the clusters both use it)."""
    if not runs:
        return pl.DataFrame(schema={"id": pl.String, "filter": pl.String, "keep": pl.Boolean,
                                    "reason": pl.String, "first_at": pl.Datetime("us", "UTC")})  # fmt: skip
    return wh.sql(
        f"SELECT id, filter, arg_max(keep, (created_at, run_id)) AS keep, arg_max(reason, (created_at, run_id)) "
        f"AS reason, min(created_at) AS first_at FROM verdicts AT (VERSION => {version}) "
        "WHERE list_contains(?, run_id) GROUP BY id, filter",
        [runs],
    )


def _funnel(wh: Warehouse, record: dict[str, Any], version: int, latest: pl.DataFrame) -> dict[str, Any]:
    everything = int(wh.sql(f"SELECT count(DISTINCT id) AS n FROM rows AT (VERSION => {version})")["n"][0])
    out: dict[str, Any] = {"start": everything, "filters": [], "selected": int(record["row_count"])}
    order = latest.group_by("filter").agg(pl.col("first_at").min()).sort("first_at")["filter"].to_list()
    dropped_so_far: set[str] = set()
    remaining = everything
    for name in order:
        mine = latest.filter(pl.col("filter") == name)
        drops = mine.filter(~pl.col("keep") & ~pl.col("id").is_in(list(dropped_so_far)))
        dropped_so_far |= set(drops["id"].to_list())
        remaining -= drops.height
        reasons = []
        coded = drops.with_columns(
            pl.col("reason").fill_null("(no reason)").str.extract(r"^(\S+)").alias("code")
        )
        for code, n in (
            coded.group_by("code").len().sort(["len", "code"], descending=[True, False]).iter_rows()
        ):
            ids = coded.filter(pl.col("code") == code).sort("id")["id"].head(EXAMPLES).to_list()
            examples = wh.sql(
                "SELECT DISTINCT id, left(instruction, 160) AS instruction, left(output, 160) AS output "
                f"FROM rows AT (VERSION => {version}) WHERE list_contains(?, id) ORDER BY id",
                [ids],
            )
            shown = examples.join(coded.select("id", "reason"), on="id", how="left")
            reasons.append({"reason": code, "rows": n, "examples": _rows(shown)})
        out["filters"].append(
            {
                "filter": name,
                "judged": mine.height,
                "dropped": drops.height,
                "remaining": remaining,
                "reasons": reasons,
            }
        )
    return out


def _clusters(latest: pl.DataFrame) -> list[dict[str, Any]]:
    """Sizes of near-duplicate clusters: a kept row with the rows each dedup filter dropped as its copies."""
    copies = latest.filter(~pl.col("keep") & pl.col("reason").str.contains(DEDUP_REASON)).select(
        "filter", pl.col("reason").str.extract(DEDUP_REASON, 2).alias("kept")
    )
    out = []
    for name in sorted(set(copies["filter"].to_list())):
        sizes = (
            copies.filter(pl.col("filter") == name)
            .group_by("kept")
            .len()
            .select((pl.col("len") + 1).alias("size"))
        )
        histogram = sizes.group_by("size").len().sort("size")
        out.append(
            {
                "filter": name,
                "clusters": sizes.height,
                "rows_in_clusters": int(sizes["size"].sum()),
                "sizes": [{"size": int(s), "clusters": int(n)} for s, n in histogram.iter_rows()],
            }
        )
    return out


def _teacher(wh: Warehouse, version: int, record: dict[str, Any]) -> list[dict[str, Any]]:
    """What the teacher calls behind the snapshot cost: those of every job that made a row the
    warehouse held when the snapshot was made (kept or dropped), and of the filters it honoured."""
    jobs = set(
        wh.sql(f"SELECT DISTINCT job_id FROM rows AT (VERSION => {version}) WHERE job_id IS NOT NULL")[
            "job_id"
        ].to_list()
    )
    jobs |= set(record["filter_runs"] or [])
    if not jobs:
        return []
    return _rows(
        wh.sql(
            "SELECT c.model, c.job_id, j.kind, j.plugin, count(*) AS calls, "
            "CAST(coalesce(sum(c.prompt_tokens), 0) AS BIGINT) AS prompt_tokens, "
            "CAST(coalesce(sum(c.completion_tokens), 0) AS BIGINT) AS completion_tokens, "
            "count(*) FILTER (WHERE c.error IS NOT NULL) AS failures "
            "FROM llm_calls c LEFT JOIN jobs j ON j.id = c.job_id WHERE list_contains(?, c.job_id) "
            "GROUP BY ALL ORDER BY calls DESC, c.model, c.job_id",
            [sorted(jobs)],
        )
    )


HEADLINE = ("loss", "perplexity", "rouge_l", "bleu", "similarity", "instructions_followed")


def _runs(wh: Warehouse, record: dict[str, Any]) -> list[dict[str, Any]]:
    found = wh.sql(
        "SELECT id, trainer, method, status, config, metrics, started_at FROM runs WHERE snapshot = ? "
        "AND snapshot_digest = ? ORDER BY started_at",
        [record["name"], record["digest"]],
    )
    out = []
    for run in found.iter_rows(named=True):
        metrics = json.loads(run["metrics"] or "{}")
        after = metrics.get("eval") or {}
        before = metrics.get("eval_before") or {}
        domains = sorted(set(after.get("per_domain") or {}) | set(before.get("per_domain") or {}))
        out.append(
            {
                "id": run["id"],
                "trainer": run["trainer"],
                "method": run["method"],
                "status": run["status"],
                "model": json.loads(run["config"] or "{}").get("model"),  # what was trained or evaluated
                "settings": _telling(json.loads(run["config"] or "{}")),
                "before": {k: before.get(k) for k in HEADLINE} if before else None,
                "after": {k: after.get(k) for k in HEADLINE} if after else None,
                "per_domain": [
                    {
                        "domain": d,
                        "rows": ((after.get("per_domain") or {}).get(d) or {}).get("rows"),
                        "before": {
                            k: ((before.get("per_domain") or {}).get(d) or {}).get(k) for k in HEADLINE
                        },
                        "after": {k: ((after.get("per_domain") or {}).get(d) or {}).get(k) for k in HEADLINE},
                    }
                    for d in domains
                ],
                "train": {
                    k: v for k, v in (metrics.get("train") or {}).items() if isinstance(v, int | float)
                },
            }
        )
    return out


# The settings that tell runs on one snapshot apart (seeds, data mixes, curricula, losses, lengths).
TELLING = ("seed", "max_steps", "epochs", "learning_rate", "mix", "curriculum", "pacing", "domain_alpha",
           "consistency_beta", "split", "limit")  # fmt: skip


def _telling(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in TELLING if config.get(k) is not None}


def _compare(wh: Warehouse, name: str, other: str) -> dict[str, Any]:
    diff = snapshots.diff(wh, other, name, sample=EXAMPLES)
    by_source = wh.sql(
        f"SELECT coalesce(a.source, b.source) AS source, coalesce(b.n, 0) AS {_q(other)}, coalesce(a.n, 0) AS "
        f"{_q(name)} FROM (SELECT source, count(*) AS n FROM snapshot('{name}') GROUP BY ALL) a FULL JOIN "
        f"(SELECT source, count(*) AS n FROM snapshot('{other}') GROUP BY ALL) b ON a.source = b.source "
        "ORDER BY 1"
    )
    return {
        "other": other,
        "added": diff["added"]["count"],
        "removed": diff["removed"]["count"],
        "added_examples": _rows(diff["added"]["sample"]),
        "removed_examples": _rows(diff["removed"]["sample"]),
        "by_source": _rows(by_source),
    }


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
