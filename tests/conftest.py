"""Shared fixtures: a real DuckLake warehouse in a temp folder, and small data-file writers."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

import factory


def pytest_collection_modifyitems(config, items):
    """The ecosystem tests last: `make test` installs their tools in the background meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("ecosystem") is not None)


@pytest.fixture
def wh(tmp_path: Path):
    warehouse = factory.init(tmp_path / "wh")
    yield warehouse
    warehouse.close()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file in a folder (the writers' lock files aside): to show nothing changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def alpaca(n: int, prefix: str = "task") -> list[dict]:
    return [
        {
            "instruction": f"{prefix} {i}: say the number",
            "input": "" if i % 2 else f"n={i}",
            "output": f"The number is {i}.",
        }
        for i in range(n)
    ]


def import_command(data: Path, warehouse: Path, *extra: str) -> list[str]:
    """`factory import` as a user would run it, without a progress bar."""
    return [
        sys.executable,
        "-m",
        "factory.cli",
        "import",
        str(data),
        "--warehouse",
        str(warehouse),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a trained BPE tokenizer and a chat template (built once per session)."""
    import torch

    from tests.tiny_model import build

    torch.set_num_threads(1)
    return build(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tmp_path_factory):
    """vLLM's real OpenAI-compatible server on the CPU, serving the tiny model as 'tiny'."""
    from tests.servers import VLLM_PYTHON, VLLMServer

    if not VLLM_PYTHON.exists():
        pytest.fail("the vLLM CPU server lives in .venv-vllm: run `make vllm-env` (make test does)")
    server = VLLMServer(tiny_model, "tiny", tmp_path_factory.mktemp("vllm"), max_model_len=2048).wait()
    yield server
    server.stop()
