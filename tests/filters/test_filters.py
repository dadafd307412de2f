"""Filters write verdicts through the runner: exact dedup, reruns, incremental judging, snapshots honour them."""

from __future__ import annotations

import factory
from factory.runners.filtering import run_filter
from tests.conftest import write_jsonl

ROWS = [
    {"instruction": "Name a prime", "input": "", "output": "7"},
    {"instruction": "name a  PRIME", "input": "", "output": "Seven is a prime number."},
    {"instruction": "Name a prime!", "input": "", "output": "2"},
    {"instruction": "Name an even number", "input": "", "output": "4"},
]


def _ids(wh, where: str) -> list[str]:
    return wh.sql(f"SELECT id FROM rows WHERE {where}")["id"].to_list()


def test_exact_dedup_first_and_longest(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", ROWS)))
    first = run_filter(wh, "exact")
    assert (first.candidates, first.kept, first.dropped) == (4, 3, 1)
    assert first.reasons == {"exact_duplicate": 1}
    dropped = wh.sql("SELECT id, reason FROM verdicts WHERE NOT keep").row(0, named=True)
    [kept_id] = _ids(wh, "output = '7'")
    assert dropped["reason"] == f"exact_duplicate of {kept_id}"
    assert dropped["id"] == _ids(wh, "output = 'Seven is a prime number.'")[0]
    snap = wh.create_snapshot("deduped")
    assert snap["row_count"] == 3

    longest = run_filter(wh, "exact", {"keep": "longest", "strip_punctuation": True})
    assert (longest.kept, longest.dropped) == (2, 2)  # "Name a prime!" joins the group without punctuation
    kept = set(wh.sql(f"SELECT id FROM verdicts WHERE run_id = '{longest.run_id}' AND keep")["id"])
    assert kept == set(_ids(wh, "output IN ('Seven is a prime number.', '4')"))


def test_rerun_does_no_work_and_new_rows_meet_the_kept_pool(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", ROWS[:2] + ROWS[3:])))
    first = run_filter(wh, "exact")
    again = run_filter(wh, "exact")
    assert (again.candidates, again.already_judged) == (0, 3)
    assert wh.sql("SELECT count(*) AS n FROM verdicts")["n"][0] == first.candidates
    write_jsonl(
        tmp_path / "b.jsonl",
        [
            {"instruction": "NAME A PRIME", "input": "", "output": "11"},
            {"instruction": "Name a colour", "input": "", "output": "Blue"},
        ],
    )
    factory.import_file(wh, str(tmp_path / "b.jsonl"))
    later = run_filter(wh, "exact")
    assert (later.candidates, later.already_judged, later.kept, later.dropped) == (2, 3, 1, 1)
    [pool_winner] = _ids(wh, "output = '7'")
    assert wh.sql("SELECT reason FROM verdicts WHERE id = ?", [_ids(wh, "output = '11'")[0]])["reason"][
        0
    ] == (f"exact_duplicate of {pool_winner}")
    jobs = wh.sql("SELECT status, config FROM jobs WHERE kind = 'filter'")
    assert set(jobs["status"]) == {"succeeded"} and jobs.height == 3


def test_filter_on_a_snapshot_or_condition(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", ROWS)))
    wh.create_snapshot("evens", where="output = '4'")
    on_snapshot = run_filter(wh, "exact", on="evens")
    assert on_snapshot.candidates == 1 and on_snapshot.kept == 1
    on_where = run_filter(wh, "exact", {"key": "instruction"}, where="output <> '4'")
    assert on_where.candidates == 3 and on_where.dropped == 1
    verdicts = wh.sql("SELECT count(*) AS n FROM verdicts")["n"][0]
    assert verdicts == 4 and wh.count() == 4  # rows are never deleted


def test_filter_cli(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "FACTORY_WAREHOUSE": str(tmp_path / "wh")}
    factory.init(tmp_path / "wh").close()
    write_jsonl(tmp_path / "a.jsonl", ROWS)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "factory.cli", *args], env=env, capture_output=True, text=True
        )

    assert cli("import", str(tmp_path / "a.jsonl"), "--no-progress").returncode == 0
    out = cli("filter", "exact", "--set", "keep=longest")
    assert out.returncode == 0, out.stderr
    assert "4 row(s) judged" in out.stdout and "dropped 1 (exact_duplicate 1)" in out.stdout
    bad = cli("filter", "exact", "--set", "keep=biggest")
    assert bad.returncode == 1 and "keep" in bad.stderr
    unknown = cli("filter", "nope")
    assert unknown.returncode == 1 and "no filter plugin named 'nope'" in unknown.stderr
