"""The teacher layer: spec parsing, the call cache, budgets, and each backend for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from factory.store import jobs
from factory.teachers.call_cache import CallCache, recover_journals
from factory.teachers.teacher import (
    BudgetExhausted,
    Request,
    Sampling,
    Teacher,
    TeacherError,
    TeacherOptions,
    check,
    make_backend,
    parse_spec,
)
from tests.servers import FAULTS, ScriptedServer


def _teacher(wh, spec: str, job: str | None = None, **kwargs) -> Teacher:
    options = kwargs.pop("options", TeacherOptions())
    job = job or jobs.start(wh, "generate", "test", {})
    return Teacher(make_backend(parse_spec(spec), options), CallCache(wh, job), **kwargs)


def test_spec_syntax():
    spec = parse_spec("openai:gpt-4o-mini@http://127.0.0.1:8000/v1")
    assert (spec.backend, spec.model, spec.base_url) == ("openai", "gpt-4o-mini", "http://127.0.0.1:8000/v1")
    assert str(spec) == "openai:gpt-4o-mini"  # the URL is never what gets stored
    assert parse_spec("hf:/models/x@v2").model == "/models/x@v2"
    for bad in ("gpt-4o", "llama:x", "openai:", "openai:m@localhost:8000"):
        with pytest.raises(TeacherError, match=r"teacher spec|base URL"):
            parse_spec(bad)


def test_openai_backend_without_key_or_endpoint_says_what_to_do(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TeacherError, match="OPENAI_API_KEY"):
        check("openai:gpt-4o-mini")


def test_unreachable_endpoint_fails_clearly():
    result = check("openai:m@http://127.0.0.1:9/v1", TeacherOptions(timeout_s=1, max_retries=1))
    assert result["text"] is None
    assert len(result["failed_attempts"]) == 2
    assert all(e.startswith("connection") for e in result["failed_attempts"])


def test_hf_backend_completion_chat_n_logprobs_stop_and_cache(wh, tiny_model):
    teacher = _teacher(wh, f"hf:{tiny_model}")
    requests = [
        Request(prompt="Write a story about the city", sampling=Sampling(max_tokens=12, logprobs=1), n=2),
        Request(messages=(("user", "Give an example"),), sampling=Sampling(temperature=0, max_tokens=8)),
        Request(prompt="List the", sampling=Sampling(temperature=0, max_tokens=30, stop=("e",))),
    ]
    first = teacher.generate(requests)
    assert [len(s) for s in first] == [2, 1, 1]
    assert all(len(s.logprobs) == s.completion_tokens for s in first[0])
    assert all(lp <= 0 for s in first[0] for lp in s.logprobs)
    assert first[1][0].finish_reason in ("stop", "length")
    stopped = first[2][0]
    assert "e" not in stopped.text and (stopped.finish_reason == "stop" or stopped.completion_tokens == 30)
    assert teacher.stats.calls == 3 and teacher.stats.cache_hits == 0

    again = teacher.generate(requests)  # all from the cache: no new call
    assert teacher.stats.calls == 3 and teacher.stats.cache_hits == 4
    assert [[s.text for s in row] for row in again] == [[s.text for s in row] for row in first]
    teacher.close()
    stored = wh.sql("SELECT count(*) AS n, sum(completion_tokens) AS t FROM llm_calls WHERE error IS NULL")
    assert stored["n"][0] == 4
    assert stored["t"][0] == sum(s.completion_tokens for row in first for s in row)
    cached = _teacher(wh, f"hf:{tiny_model}")  # a new job sees the warehouse's answers
    cached.generate(requests)
    assert cached.stats.calls == 0 and cached.stats.cache_hits == 4
    cached.close()


def test_hf_chat_needs_a_chat_template(wh, tiny_model, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    settings = json.loads((base / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(settings))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    teacher = _teacher(wh, f"hf:{base}")
    assert teacher.backend.chat is False
    with pytest.raises(TeacherError, match="no chat template"):
        teacher.generate([Request(messages=(("user", "hi"),))])


def test_budget_stops_cleanly_and_a_rerun_goes_on(wh, tiny_model):
    requests = [Request(prompt=f"Task {i}", sampling=Sampling(temperature=0, max_tokens=4)) for i in range(5)]
    options = TeacherOptions(batch_size=1)
    teacher = _teacher(wh, f"hf:{tiny_model}", max_calls=2, options=options)
    with pytest.raises(BudgetExhausted, match="budget reached"):
        teacher.generate(requests)
    teacher.close()
    assert wh.sql("SELECT count(*) AS n FROM llm_calls")["n"][0] == 2
    rerun = _teacher(wh, f"hf:{tiny_model}", max_calls=10, options=options)
    rerun.generate(requests)
    assert (rerun.stats.cache_hits, rerun.stats.calls) == (2, 3)
    rerun.close()


def test_openai_backend_survives_faults_and_records_each(wh):
    """30% of requests fail in every way a server can fail; the job still gets every answer."""
    # A slow reply takes 3 s against a 1.5 s timeout: far from the few ms of a normal one,
    # so a loaded machine does not turn normal replies into timeouts.
    with ScriptedServer(lambda prompt: f"echo {prompt[-12:]}", fault_rate=0.3, slow_s=3.0) as server:
        options = TeacherOptions(timeout_s=1.5, concurrency=8, max_retries=10)
        teacher = _teacher(wh, f"openai:scripted@{server.url}", options=options)
        requests = [Request(prompt=f"prompt {i:03d}", n=1 + i % 2) for i in range(80)]
        requests += [Request(messages=(("user", f"chat {i}"),)) for i in range(40)]
        answers = teacher.generate(requests)
        teacher.close()
    assert all(s.text and s.error is None for row in answers for s in row)
    assert answers[3][1].text == "echo prompt 003"
    assert set(server.faults) == set(FAULTS)  # every kind of fault happened
    failures = wh.sql(
        "SELECT split_part(error, ':', 1) AS kind, count(*) AS n FROM llm_calls WHERE error IS NOT NULL GROUP BY 1"
    )
    by_kind = dict(failures.iter_rows())
    assert sum(by_kind.values()) == sum(server.faults.values())
    assert by_kind["http_429"] == server.faults["rate_limit"]
    assert by_kind["http_500"] == server.faults["server_error"]
    assert by_kind["timeout"] == server.faults["slow"]
    assert by_kind["bad_response"] == server.faults["malformed_json"]
    assert by_kind["connection"] == server.faults["truncated"]
    ok = wh.sql("SELECT count(*) AS n, count(DISTINCT key) AS k FROM llm_calls WHERE error IS NULL").row(0)
    assert ok == (160, 160)


def test_a_refused_request_fails_alone_but_a_bad_key_stops_the_job(wh):
    with ScriptedServer(
        lambda prompt: 400 if "long" in prompt else 401 if "secret" in prompt else "ok"
    ) as server:
        teacher = _teacher(wh, f"openai:s@{server.url}")
        answers = teacher.generate([Request(prompt="short"), Request(prompt="too long")])
        assert answers[0][0].text == "ok"
        assert answers[1][0].text is None and answers[1][0].error.startswith("no answer: http_400")
        assert teacher.stats.calls == 2  # a refused request is not retried
        with pytest.raises(TeacherError, match="http_401"):
            teacher.generate([Request(prompt="secret")])
        teacher.close()
    errors = wh.sql(
        "SELECT split_part(error, ':', 1) AS kind FROM llm_calls WHERE error IS NOT NULL ORDER BY 1"
    )
    assert errors["kind"].to_list() == ["http_400", "http_401"]


def test_a_killed_jobs_journal_is_recovered(wh, tiny_model):
    """Answers journaled by a process that died before its commit still count as cached."""
    job = jobs.start(wh, "generate", "test", {})
    teacher = _teacher(wh, f"hf:{tiny_model}", job=job)
    teacher.cache.flush = lambda: 0  # this process "dies" before moving its journal into the lake
    teacher.generate([Request(prompt="Task a", sampling=Sampling(max_tokens=4))])
    assert wh.sql("SELECT count(*) AS n FROM llm_calls")["n"][0] == 0
    jobs.fail(wh, job, "killed")
    assert recover_journals(wh) == 1
    assert wh.sql("SELECT count(*) AS n FROM llm_calls WHERE error IS NULL")["n"][0] == 1
    assert recover_journals(wh) == 0


def test_teacher_check_command(tiny_model):
    done = subprocess.run(
        [sys.executable, "-m", "factory.cli", "teacher", "check", f"hf:{tiny_model}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "(chat): loaded in" in done.stdout and "answered in" in done.stdout


@pytest.mark.server
def test_openai_backend_against_a_real_vllm_server(wh, vllm_server):
    teacher = _teacher(wh, f"openai:tiny@{vllm_server.url}")
    requests = [
        Request(prompt="Write a poem", sampling=Sampling(max_tokens=16, logprobs=1, seed=1), n=3),
        Request(messages=(("user", "Explain rain"),), sampling=Sampling(max_tokens=16, logprobs=2, seed=1)),
    ]
    answers = teacher.generate(requests)
    teacher.close()
    assert [len(a) for a in answers] == [3, 1]
    for sample in answers[0] + answers[1]:
        assert sample.finish_reason in ("stop", "length")
        assert 0 < len(sample.logprobs) <= 16
    calls = wh.sql("SELECT sum(prompt_tokens) AS p, sum(completion_tokens) AS c FROM llm_calls").row(0)
    assert calls[0] > 0 and calls[1] == sum(s.completion_tokens for a in answers for s in a) > 0


@pytest.mark.server
def test_vllm_backend_in_process(tiny_model, tmp_path):
    """The in-process vllm backend, run by the vLLM environment's Python (vLLM lives there)."""
    from tests.installs import vllm_python

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(tmp_path / "cache"),
           "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    done = subprocess.run(
        [str(vllm_python()), "-m", "factory.cli", "teacher", "check", f"vllm:{tiny_model}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vllm:" in done.stdout and "(chat): loaded in" in done.stdout
