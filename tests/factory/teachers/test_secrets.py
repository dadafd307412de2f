"""A key the endpoint echoes back never reaches the warehouse, the journals or the terminal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import factory
from factory.errors import scrub
from tests.servers import ScriptedServer

FACTORY = [sys.executable, "-m", "factory.cli"]


def everything_stored(wh_path) -> str:
    """Every text the warehouse holds about jobs and calls, and every non-Parquet file in it."""
    with factory.open(wh_path, read_only=True) as wh:
        tables = [
            wh.sql("SELECT * FROM jobs").write_json(),
            wh.sql("SELECT * FROM llm_calls").write_json(),
            wh.sql("SELECT * FROM rows").write_json(),
            wh.sql("SELECT * FROM verdicts").write_json(),
        ]
    files = [
        p.read_bytes().decode("utf-8", "replace")
        for p in wh_path.rglob("*")
        if p.is_file() and p.suffix != ".parquet"
    ]
    return "\n".join(tables + files)


@pytest.mark.parametrize(
    ("status", "env_name", "key"),
    [
        (401, "OPENAI_API_KEY", "sk-test-Zq8Jx3Vb7Lm2Nc9Pw4Rt6Ys1"),  # bad key: the job stops
        (400, "TEACHER_AUTH", "plainvalue8f3k2m9q7w"),  # a refused request: the job goes on
    ],
)
def test_an_echoed_key_is_scrubbed_everywhere(tmp_path, status, env_name, key):
    wh_path = tmp_path / "wh"
    factory.init(wh_path).close()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("say hello\nsay goodbye\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | {env_name: key}
    with ScriptedServer(lambda prompt: status, echo_headers=True) as server:
        proc = subprocess.run(
            [*FACTORY, "generate", "distill", "--file", str(prompts), "--teacher", f"openai:m@{server.url}",
             "--set", f"teacher.options.api_key_env={env_name}", "--quiet", "-w", str(wh_path)],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
    assert server.requests >= 2  # the key was sent, and echoed
    printed = proc.stdout + proc.stderr
    assert proc.returncode == (1 if status == 401 else 0), printed
    stored = everything_stored(wh_path)
    assert key not in printed and key not in stored
    assert "[redacted]" in (printed if status == 401 else stored)
    assert f"http_{status}" in stored  # the failure itself is still recorded


def test_scrub_removes_keys_by_shape_by_name_and_by_value(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "abcdefgh12345678")
    text = (
        "Bearer sk-abc123def456ghi789 failed; api_key=hunter2hunter2; ghp_" + "a" * 36 + " and "
        "AKIAABCDEFGHIJKLMNOP; token abcdefgh12345678; the custom secret zz-custom-9999"
    )
    clean = scrub(text, ["zz-custom-9999"])
    for secret in ("sk-abc123", "hunter2", "ghp_aaaa", "AKIAABCD", "abcdefgh12345678", "zz-custom-9999"):
        assert secret not in clean, (secret, clean)
    assert clean.startswith("Bearer [redacted] failed; api_key=[redacted]")
    assert scrub("a year 2024 and a count of 12345678 stay") == "a year 2024 and a count of 12345678 stay"
