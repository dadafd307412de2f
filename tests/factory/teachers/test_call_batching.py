"""Teacher calls are journaled one by one but committed in batches, never lost on the way."""

from __future__ import annotations

import pytest

import factory
from factory.store import jobs
from factory.teachers.call_cache import CallCache
from factory.teachers.teacher import Request, Teacher, TeacherOptions, make_backend, parse_spec
from tests.servers import ScriptedServer


def _count(wh, where: str = "TRUE") -> int:
    return wh.sql(f"SELECT count(*) AS n FROM llm_calls WHERE {where}")["n"][0]


def _journal_lines(teacher: Teacher) -> int:
    return teacher.cache.journal_path.read_text().count("\n")


def test_calls_commit_in_batches_and_the_job_sees_its_pending_answers(wh):
    with ScriptedServer(lambda prompt: f"echo {prompt}") as server:
        job = jobs.start(wh, "generate", "test", {})
        teacher = Teacher(
            make_backend(parse_spec(f"openai:s@{server.url}"), TeacherOptions()), CallCache(wh, job)
        )
        teacher.cache.flush_every = 5
        requests = [Request(prompt=f"p{i}") for i in range(12)]
        first = teacher.generate(requests)
        assert (_count(wh), _journal_lines(teacher)) == (10, 2)  # two batches committed, two journaled
        again = teacher.generate(requests)  # answered from llm_calls and from the journal alike
        assert teacher.stats.calls == 12 and teacher.stats.cache_hits == 12
        assert [r[0].text for r in again] == [r[0].text for r in first] == [f"echo p{i}" for i in range(12)]
        teacher.close()
    assert _count(wh, "error IS NULL") == 12
    assert not teacher.cache.journal_path.exists()


def test_a_generator_commits_its_calls_with_its_rows(wh, tmp_path):
    (tmp_path / "p.txt").write_text("".join(f"Explain idea {i}\n" for i in range(20)))
    with ScriptedServer(lambda prompt: f"answer to {prompt}") as server:
        summary = factory.generate(
            wh, "distill", file=str(tmp_path / "p.txt"), **{"teacher.teacher": f"openai:s@{server.url}"}
        )
    assert summary.accepted == 20 and summary.teacher_stats["calls"] == 20
    assert _count(wh, f"job_id = '{summary.job_id}' AND error IS NULL") == 20
    messages = wh.history()["message"].to_list()
    assert not any(m and m.startswith("llm calls") for m in messages)  # no commit of their own
    assert not list((wh.folder / ".calls").glob("*.jsonl"))
    with ScriptedServer(lambda prompt: "never asked") as server:  # a rerun asks nothing
        rerun = factory.generate(
            wh, "distill", file=str(tmp_path / "p.txt"), **{"teacher.teacher": f"openai:s@{server.url}"}
        )
    assert rerun.teacher_stats["cache_hits"] == 20 and rerun.teacher_stats["calls"] == 0
    assert server.requests == 0


def test_calls_are_committed_even_when_the_rows_commit_fails(wh, tmp_path, monkeypatch):
    (tmp_path / "p.txt").write_text("".join(f"Explain idea {i}\n" for i in range(6)))

    def broken(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(wh, "add_rows", broken)
    with ScriptedServer(lambda prompt: f"answer to {prompt}") as server, pytest.raises(OSError, match="fire"):
        factory.generate(
            wh, "distill", file=str(tmp_path / "p.txt"), **{"teacher.teacher": f"openai:s@{server.url}"}
        )
    assert _count(wh, "error IS NULL") == 6  # paid for, so kept for the rerun
    assert wh.sql("SELECT status FROM jobs WHERE kind = 'generate'")["status"].to_list() == ["failed"]
