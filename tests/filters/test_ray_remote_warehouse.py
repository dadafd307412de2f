"""Filters on a Ray cluster over a warehouse in PostgreSQL + S3: the workers read and write the bucket.

The driver has DuckDB write the candidates into `<data path>/scratch/<job>/` (here an S3
prefix of moto's server), the workers read them and write their verdicts there with
their own S3 client, and the driver commits from those files. A driver killed between
the workers' writing and its commit leaves the files and no verdict; the next job on
the machine removes them, and the rerun gives the in-process verdicts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import factory
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow


def corpus() -> list[dict]:
    """Templated tasks with near-duplicate rewordings, exact copies, and rows with personal data."""
    rows = []
    for i in range(120):
        topic = ["rivers", "volcanoes", "tax law", "sorting algorithms", "sourdough"][i % 5]
        rows.append(
            {
                "instruction": f"Write a short explanation of {topic} for a curious student, example {i // 5}",
                "output": f"Here is an explanation of {topic}, part {i // 5}: it starts simply and builds up.",
            }
        )
        if i % 7 == 0:  # the same task reworded at the end: a near duplicate
            rows.append(
                {
                    "instruction": f"Write a short explanation of {topic} for a curious student, example {i // 5} please",
                    "output": f"Here is an explanation of {topic}, part {i // 5}: it starts simply.",
                }
            )
        if i % 11 == 0:  # a copy in other case and spacing, with its own answer: an exact duplicate
            rows.append({"instruction": rows[-1]["instruction"].upper() + "  ", "output": f"Answer {i}."})
    rows.append({"instruction": "Email the author", "output": "Write to jane.doe@gmail.com about it."})
    return rows


def verdicts(wh) -> pl.DataFrame:
    return wh.sql("SELECT id, filter, keep, score, reason FROM verdicts ORDER BY ALL")


def scratch_keys(store) -> list[str]:
    """Objects in the jobs' scratch folders (the folder's own marker object aside)."""
    folder = store.prefix + "scratch/"
    return [k for k in store.keys() if k.startswith(folder) and k != folder]  # noqa: SIM118 (a method, not a dict)


def test_filters_on_ray_read_and_write_the_bucket(tmp_path, remote_store, ray_cluster):
    data = write_jsonl(tmp_path / "tasks.jsonl", corpus())
    local = factory.init(tmp_path / "local")
    factory.import_file(local, str(data))
    remote = remote_store.init(tmp_path / "remote")
    factory.import_file(remote, str(data))
    for name in ("pii", "minhash", "exact"):
        factory.filter(local, name)
        factory.filter(remote, name, engine="ray", ray_address=ray_cluster.address)
    expected = verdicts(local)
    assert verdicts(remote).equals(expected)
    assert expected.filter(pl.col("reason").str.starts_with("near_duplicate")).height >= 10
    assert expected.filter(pl.col("reason").str.starts_with("exact_duplicate")).height >= 5
    assert remote.count() == local.count()  # the redacted copy, added from the workers' files
    assert not scratch_keys(remote_store)  # the job's files are gone once it committed
    assert not list((tmp_path / "remote").rglob("*.parquet"))  # nothing of the data is local


def test_a_driver_killed_before_its_commit_leaves_files_and_no_verdict(tmp_path, remote_store, ray_cluster):
    data = write_jsonl(tmp_path / "tasks.jsonl", corpus())
    wh = remote_store.init(tmp_path / "wh")
    factory.import_file(wh, str(data))
    wh.close()
    command = [sys.executable, "-m", "factory.cli", "filter", "minhash", "--warehouse", str(tmp_path / "wh"),
               "--engine", "ray", "--ray-address", ray_cluster.address]  # fmt: skip
    killed = subprocess.run(
        command,
        env={**os.environ, "FACTORY_CRASH_AT": "filter.judged"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = scratch_keys(remote_store)
    assert any("/verdicts/" in k for k in left) and any("/contenders/" in k for k in left)  # written in S3
    wh = factory.open(tmp_path / "wh")
    assert wh.count("verdicts") == 0
    wh.close()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "INFO" not in rerun.stderr, rerun.stderr[-2000:]  # Ray's progress lines would bury the summary
    wh = factory.open(tmp_path / "wh")
    assert f"{wh.count()} row(s) judged" in rerun.stdout.replace(",", ""), rerun.stdout
    assert f"on ray ({ray_cluster.address})" in rerun.stdout  # the summary says where it ran
    assert not scratch_keys(remote_store)  # the killed job's files were removed by the next job
    local = factory.init(tmp_path / "local")
    factory.import_file(local, str(data))
    factory.filter(local, "minhash")
    assert verdicts(wh).drop("filter").equals(verdicts(local).drop("filter"))
    assert Path(tmp_path / "wh" / "factory.json").exists()
