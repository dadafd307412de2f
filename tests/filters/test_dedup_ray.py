"""MinHash and exact dedup on Ray Data (filters/_dedup_ray.py) give the in-process verdicts.

One warehouse is judged in-process and one on the session's three-node cluster (a head
with no CPUs, two one-CPU workers), both from the same rows: the verdict rows (id, keep,
score, reason) must be the same, on the realistic test files and on a templated corpus
with near-duplicate clusters, chains, copies up to case and spacing, empty keys and
conversations; after more rows are added (the kept pool decides); with keep=longest and
key=turns. The state API says both workers ran the tasks and the head none.
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest

import factory
from factory.store.schema import MESSAGE_DTYPE

pytestmark = pytest.mark.slow

REALISTIC = Path(__file__).parents[1] / "data" / "realistic"
VERDICTS = (
    "SELECT v.id, j.plugin, j.config, v.keep, v.score, v.reason FROM verdicts v JOIN jobs j ON j.id = v.run_id "
    "ORDER BY ALL"
)


def corpus(seed: int, groups: int) -> pl.DataFrame:
    """Rows in groups: near-duplicates (one word changed), chains A~B~C with A and C apart, copies
    up to case and spacing, conversations (two answers to the same turns), empty and short keys."""
    rng = random.Random(seed)
    words = [f"w{k}" for k in range(5000)]
    rows: list[dict] = []

    def add(text: str, output: str | None = None, messages: list[dict] | None = None) -> None:
        output = output if output is not None else " ".join(rng.choices(words, k=rng.randint(1, 30)))
        kind = "conversation" if messages else "instruction"
        rows.append({"kind": kind, "instruction": text, "input": "", "output": output, "messages": messages})

    for group in range(groups):
        base = rng.choices(words, k=rng.randint(20, 80))
        draw = rng.random()
        if draw < 0.15:  # a chain: J(A, B) and J(B, C) above 0.7, J(A, C) below
            b = list(base)
            b[len(b) // 3] = "chainx"
            c = list(b)
            c[2 * len(b) // 3] = "chainy"
            for text, end in ((base, "A"), (b, "B"), (c, "C")):
                add(" ".join(text), output=f"chain {group} {end}")
        elif draw < 0.45:
            add(" ".join(base))
            for _ in range(rng.randint(1, 5)):
                near = list(base)
                near[rng.randrange(len(near))] = rng.choice(words)
                add(" ".join(near))
        elif draw < 0.6:
            add(" ".join(base))
            for _ in range(rng.randint(1, 3)):
                add("  ".join(base).upper(), output="copy " + rng.choice(words))
        elif draw < 0.7:
            turns = [" ".join(rng.choices(words, k=15)) for _ in range(3)]
            messages = [
                m
                for t in turns
                for m in ({"role": "user", "content": t}, {"role": "assistant", "content": t[:9]})
            ]
            add(turns[-1], output=messages[-1]["content"], messages=messages)
            other = [*messages[:-1], {"role": "assistant", "content": "another answer"}]
            add(turns[-1], output="another answer", messages=other)
        elif draw < 0.75:
            add("", output="empty " + rng.choice(words))
            add(" ".join(base[:3]))
        else:
            add(" ".join(base))
    rng.shuffle(rows)
    schema = {"kind": pl.String, "instruction": pl.String, "input": pl.String, "output": pl.String,
              "messages": MESSAGE_DTYPE}  # fmt: skip
    return pl.DataFrame(rows, schema=schema).with_columns(pl.lit("").alias("system"))


def _warehouse(where: Path, frame: pl.DataFrame):
    wh = factory.init(where)
    for folder in ("templated", "finetune", "tasks/seed_tasks.jsonl"):
        factory.import_file(wh, str(REALISTIC / folder), on_error="skip")
    wh.add_rows([frame], "templated corpus")
    return wh


RUNS = [
    ("minhash", {}),
    ("exact", {}),
    ("minhash", {"keep": "longest", "key": "turns"}),
    ("exact", {"keep": "longest", "key": "record"}),
]


def test_same_verdicts_as_in_process(tmp_path, ray_cluster):
    frame = corpus(0, 700)
    first, later = frame.head(1400), frame
    verdicts = {}
    for engine in ("local", "ray"):
        wh = _warehouse(tmp_path / engine, first)
        address = ray_cluster.address if engine == "ray" else None
        for name, config in RUNS:
            factory.filter(wh, name, engine=engine, ray_address=address, **config)
        wh.add_rows([later], "more rows")  # the rerun judges the new rows against the kept pool
        reruns = [
            factory.filter(wh, name, engine=engine, ray_address=address, **config)
            for name, config in RUNS[:2]
        ]
        assert all(s.candidates > 30 and s.already_judged > 1000 for s in reruns)
        verdicts[engine] = wh.sql(VERDICTS)
        outputs = wh.sql("SELECT id, output FROM rows")
        wh.close()
    local, ray = verdicts["local"], verdicts["ray"]
    assert local.height > 7000
    assert local.equals(ray)

    # The corpus exercises every case: drops of each kind, chains keeping both ends, empty keys.
    first_minhash = local.filter((pl.col("plugin") == "minhash") & ~pl.col("config").str.contains("turns"))
    empty = first_minhash.join(outputs.filter(pl.col("output").str.starts_with("empty ")), on="id")
    assert empty.height > 20 and empty["keep"].all()  # no shingles: matches nothing
    reasons = local.group_by("plugin", pl.col("reason").str.split(" ").list.first()).len()
    counts = {(p, r): n for p, r, n in reasons.iter_rows()}
    assert counts[("minhash", "near_duplicate")] > 500 and counts[("exact", "exact_duplicate")] > 200
    assert first_minhash.filter(~pl.col("keep"))["score"].min() >= 0.7
    assert (local.filter(~pl.col("keep") & (pl.col("plugin") == "minhash"))["score"] < 1).sum() > 100
    # Chains A~B~C (import order shuffled): where B is not first, both ends stay and B goes.
    chains = (
        first_minhash.join(outputs, on="id")
        .filter(pl.col("output").str.starts_with("chain "))
        .with_columns(
            pl.col("output").str.split(" ").list.get(1).alias("group"),
            pl.col("output").str.tail(1).alias("end"),
        )
        .group_by("group")
        .agg((pl.col("end") + pl.col("keep").cast(pl.String)).sort().str.join(",").alias("kept"))
    )
    assert (chains["kept"] == "Atrue,Bfalse,Ctrue").sum() > 20
    # A deliberately wrong rule (a drop naming another copy of the group) would differ.
    wrong = local.with_columns(pl.col("reason").str.replace(r" of .*", " of someone"))
    assert not wrong.equals(ray)

    # The work (read, sketch, shuffle, union-find, judge) ran on both workers and none on the head;
    # the head only answers Ray Data's bookkeeping actors (_StatsActor: actor tasks).
    from ray.util.state import list_tasks

    tasks = list_tasks(address=ray_cluster.dashboard, limit=10_000, raise_on_missing_output=False, timeout=60)
    work = [t for t in tasks if t.state == "FINISHED" and t.type == "NORMAL_TASK"]
    ours = ("_bucket_rows", "_links", "_components", "_alone", "_joined", "_hashed", "_judge_part")
    for worker in ray_cluster.worker_ids:
        assert any(t.node_id == worker and any(n in t.name for n in ours) for t in work), worker
    on_head = {t.name for t in tasks if t.node_id == ray_cluster.head_id and t.type != "ACTOR_TASK"}
    assert not on_head, on_head
