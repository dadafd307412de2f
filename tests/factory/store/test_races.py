"""Identical work started at once by several `factory` processes is done once: a new warehouse is
created once, a snapshot name is taken by exactly one, a filter judges each row once, a
distillation pays each request once. Every race is run 10 times, the processes released together
by a barrier (tests/racing.py)."""

from __future__ import annotations

import time

import pytest

import factory
from tests.conftest import write_jsonl
from tests.racing import Race
from tests.servers import ScriptedServer

ROUNDS = 10


def rows(n: int, tag: str) -> list[dict]:
    return [
        {
            "instruction": f"{tag} question {i}: what is {i} plus {i}?",
            "input": "",
            "output": f"It is {2 * i}.",
        }
        for i in range(n)
    ]


@pytest.mark.slow
def test_one_snapshot_name_taken_by_exactly_one_of_three(tmp_path):
    wh_path = tmp_path / "wh"
    with factory.init(wh_path) as wh:
        factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", rows(5000, "a"))))
    race = Race(tmp_path / "race", racers=3, rounds=ROUNDS)
    try:
        for k in range(ROUNDS):
            results = race.round(k, ["snapshot", "create", f"same{k}", "-w", str(wh_path)])
            codes = sorted(r["code"] for r in results)
            assert codes == [0, 1, 1], results
            for loser in (r for r in results if r["code"]):
                assert f"snapshot 'same{k}' already exists" in loser["err"], loser
    finally:
        race.close()
    with factory.open(wh_path) as wh:
        named = wh.sql("SELECT name, count(*) AS n FROM snapshots GROUP BY name")
        assert named.height == ROUNDS and set(named["n"]) == {1}
        assert wh.sql("SELECT count(*) FROM snapshot_rows").item() == ROUNDS * 5000
        child = wh.create_snapshot("child", parent="same0")
        assert child["row_count"] == 5000


@pytest.mark.slow
def test_two_processes_creating_one_warehouse_both_open_it(tmp_path):
    # A read of the catalog's own metadata once left SQLite's read lock held while the reader
    # queued for the writer lock, and the writer waited on that read lock for minutes.
    race = Race(tmp_path / "race", racers=2, rounds=ROUNDS)
    try:
        for k in range(ROUNDS):
            results = race.round(k, ["init", "-w", str(tmp_path / f"wh{k}")], timeout=60)
            assert [r["code"] for r in results] == [0, 0], results
            with factory.open(tmp_path / f"wh{k}", read_only=True) as wh:
                assert wh.sql("SELECT count(*) FROM meta WHERE key = 'schema_version'").item() == 1
    finally:
        race.close()


@pytest.mark.slow
def test_three_identical_filters_judge_each_row_once(tmp_path):
    wh_path = tmp_path / "wh"
    factory.init(wh_path).close()
    race = Race(tmp_path / "race", racers=3, rounds=ROUNDS)
    waited = 0
    try:
        for k in range(ROUNDS):
            with factory.open(wh_path) as wh:  # new rows each round: the filter has work to do
                factory.import_file(wh, str(write_jsonl(tmp_path / f"r{k}.jsonl", rows(20_000, f"r{k}"))))
            results = race.round(k, ["filter", "exact", "-w", str(wh_path)])
            assert [r["code"] for r in results] == [0, 0, 0], results
            judged = sorted(
                int(r["out"].split(" row(s) judged")[0].rsplit(" ", 1)[1].replace(",", "")) for r in results
            )
            assert judged == [0, 0, 20_000], results
            waited += sum("waited for job" in r["out"] for r in results)
            with factory.open(wh_path, read_only=True) as wh:
                counts = wh.sql(
                    "SELECT count(*) AS verdicts, count(DISTINCT id) AS ids FROM verdicts WHERE filter = 'exact'"
                ).row(0)
                assert counts == ((k + 1) * 20_000, (k + 1) * 20_000)
    finally:
        race.close()
    assert waited >= 1  # the lock was really contended, not just taken in turn


@pytest.mark.slow
def test_two_identical_distillations_pay_each_request_once(tmp_path):
    def answer(prompt: str) -> str:
        time.sleep(0.02)  # long enough for the two runs to overlap
        return f"answer to {prompt[-20:]}"

    wh_path = tmp_path / "wh"
    factory.init(wh_path).close()
    waited = 0
    with ScriptedServer(answer) as server:
        race = Race(tmp_path / "race", racers=2, rounds=ROUNDS)
        try:
            for k in range(ROUNDS):
                prompts = tmp_path / f"prompts{k}.txt"
                prompts.write_text("".join(f"round {k} prompt {i}: name a colour\n" for i in range(40)))
                before = server.requests
                args = ["generate", "distill", "--file", str(prompts), "--teacher", f"openai:m@{server.url}",
                        "--concurrency", "2", "--quiet", "-w", str(wh_path)]  # fmt: skip
                results = race.round(k, args)
                assert [r["code"] for r in results] == [0, 0], results
                assert server.requests - before == 40  # each prompt asked once, by one of the two
                waited += sum("waited for job" in r["out"] for r in results)
        finally:
            race.close()
    with factory.open(wh_path, read_only=True) as wh:
        calls = wh.sql("SELECT count(*) AS n, count(DISTINCT key) AS keys FROM llm_calls").row(0)
        assert calls == (ROUNDS * 40, ROUNDS * 40)
        assert wh.sql("SELECT count(*) FROM rows WHERE generator = 'distill'").item() == ROUNDS * 40
        jobs = wh.sql("SELECT status, count(*) AS n FROM jobs WHERE kind = 'generate' GROUP BY ALL")
        assert jobs.rows() == [("succeeded", 2 * ROUNDS)]
    assert waited >= ROUNDS // 2
