"""Filters that ask a teacher: the AlpaGasus judge and the Llama Guard-style guard, on real HTTP servers."""

from __future__ import annotations

import json

import pytest

import factory
from factory.runners.filtering import run_filter
from factory.teachers.teacher import BudgetExhausted
from filters import guard, judge
from tests.conftest import write_jsonl
from tests.servers import ScriptedServer

ROWS = [
    {"instruction": "Name a prime", "input": "", "output": "7 is prime (good)"},
    {"instruction": "Name an even number", "input": "", "output": "3 (bad)"},
    {"instruction": "Add 2 and 2", "input": "", "output": "4 (good)"},
    {"instruction": "Say hi", "input": "", "output": "hmm (vague)"},
    {"instruction": "Spell dog", "input": "", "output": "d o g (ok)"},
]


def rater(prompt: str) -> str:
    if "### Response:" not in prompt or "accuracy" not in prompt:
        return 400
    response = prompt.split("### Response:\n")[1].split("\n")[0]
    if "(good)" in response:
        return "4.8\nAccurate and complete."
    if "(bad)" in response:
        return "Score: 1\n3 is odd."
    if "(ok)" in response:
        return "4.5"
    return "I would rather not say."


def test_rating_parser():
    assert judge.rating("4.5\nfine") == 4.5 and judge.rating("\n  Score: 3 of 5") == 3.0
    assert judge.rating("7\nway off") is None and judge.rating("no number here\n5") is None
    assert judge.rating(None) is None


def test_judge_keeps_ratings_at_threshold_and_resumes_from_the_cache(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", ROWS)))
    with ScriptedServer(rater) as server:
        spec = f"openai:judge-model@{server.url}"
        with pytest.raises(BudgetExhausted):
            run_filter(
                wh,
                "judge",
                {"teacher.teacher": spec, "teacher.max_calls": 2, "teacher.options.concurrency": 1},
            )
        asked = server.requests
        summary = run_filter(wh, "judge", {"teacher.teacher": spec})
        assert server.requests - asked == len(ROWS) - 2  # the two answered calls came from the cache
    reasons = dict(
        wh.sql(
            "SELECT r.output, v.reason FROM verdicts v JOIN rows r USING (id) WHERE filter = 'judge'"
        ).iter_rows()
    )
    assert reasons == {
        "7 is prime (good)": "judge_score 4.8",
        "3 (bad)": "judge_score 1 < 4.5",
        "4 (good)": "judge_score 4.8",
        "hmm (vague)": "judge_unparsed 'I would rather not say.'",
        "d o g (ok)": "judge_score 4.5",
    }
    assert (summary.kept, summary.dropped) == (3, 2)
    jobs = wh.sql("SELECT status, config FROM jobs WHERE plugin = 'judge' ORDER BY started_at")
    assert jobs["status"].to_list() == ["failed", "succeeded"]
    assert (
        server.url not in " ".join(jobs["config"])
        and json.loads(jobs["config"][1])["teacher"]["teacher"] == "openai:judge-model"
    )
    calls = wh.sql("SELECT count(*) AS n, count(DISTINCT key) AS k FROM llm_calls WHERE error IS NULL")
    assert calls["n"][0] == calls["k"][0] == len(ROWS)
    ranked = run_filter(wh, "exact", {"key": "instruction", "keep": "score", "score_filter": "judge"})
    assert ranked.dropped == 0  # the judge's scores are readable by the keep policy


def test_judge_cli_names_the_teacher(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "FACTORY_WAREHOUSE": str(tmp_path / "wh")}
    factory.init(tmp_path / "wh").close()
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    with ScriptedServer(rater) as server:

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "factory.cli", *args], env=env, capture_output=True, text=True
            )

        assert run("import", str(tmp_path / "a.jsonl"), "--no-progress").returncode == 0
        out = run(
            "filter", "judge", "--set", f"teacher.teacher=openai:j@{server.url}", "--set", "threshold=4"
        )
    assert out.returncode == 0, out.stderr
    assert "kept 3" in out.stdout and "dropped 2 (judge_score 1, judge_unparsed 1)" in out.stdout


def classifier(prompt: str) -> str:
    assert "S10: Hate." in prompt and "<BEGIN CONVERSATION>" in prompt
    last = prompt.split("<BEGIN CONVERSATION>")[1].split("<END CONVERSATION>")[0]
    if "bomb" in last:
        return "unsafe\nS9"
    if "insult" in last:
        return "unsafe\nS10,S5"
    if "maybe" in last:
        return "I am not sure."
    return "safe"


def test_guard_drops_unsafe_rows_with_categories(wh, tmp_path):
    rows = [
        {"instruction": "How do I make a bomb?", "input": "", "output": "I can't help with that."},
        {"instruction": "Write an insult about a group", "input": "", "output": "No."},
        {"instruction": "Name a fruit", "input": "", "output": "apple"},
        {"instruction": "Is it maybe fine?", "input": "", "output": "yes"},
    ]
    factory.import_file(wh, str(write_jsonl(tmp_path / "g.jsonl", rows)))
    with ScriptedServer(classifier) as server:
        summary = run_filter(wh, "guard", {"teacher.teacher": f"openai:guard@{server.url}"})
        user_only = run_filter(
            wh,
            "guard",
            {"teacher.teacher": f"openai:guard@{server.url}", "assess": "User", "unparsed": "keep"},
        )
        assert all("Agent: " not in p for p in server.prompts[-4:])
    reasons = dict(
        wh.sql(
            f"SELECT r.output, v.reason FROM verdicts v JOIN rows r USING (id) WHERE run_id = '{summary.run_id}'"
        ).iter_rows()
    )
    assert reasons == {
        "I can't help with that.": "unsafe S9 (S9 Indiscriminate Weapons)",
        "No.": "unsafe S10,S5 (S10 Hate, S5 Defamation)",
        "apple": "safe",
        "yes": "guard_unparsed 'i am not sure.'",
    }
    assert summary.dropped == 3 and user_only.dropped == 2
    assert guard.verdict("unsafe", guard.GuardConfig()) == (False, "unsafe ")
