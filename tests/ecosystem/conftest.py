"""A warehouse shaped like real instruction data for the tools that consume our exports:
Alpaca rows with and without input, multi-turn chats with a system prompt, non-ASCII text,
answers from a word to a paragraph, and a snapshot of preference pairs."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

import factory
from tests.conftest import write_jsonl
from tests.installs import installed

ROOT = Path(__file__).resolve().parents[2]
LLAMAFACTORY = ROOT / ".venv-llamafactory" / "bin"
AXOLOTL = ROOT / ".venv-axolotl" / "bin"
# The tools run offline: no hub look-ups, no telemetry (axolotl and LLaMA-Factory try both).
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DO_NOT_TRACK": "1", "AXOLOTL_DO_NOT_TRACK": "1",
           "WANDB_DISABLED": "true", "GRADIO_ANALYTICS_ENABLED": "False"}  # fmt: skip
TOPICS = [
    "the river",
    "a café in Zürich",
    "prime numbers",
    "the rain",
    "an email to a landlord",
    "Python lists",
]


def instruction_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        answer = " ".join(f"Sentence {k} about {topic}." for k in range(rng.choice([1, 2, 5, 12])))
        if i % 3 == 0:
            rows.append({"instruction": f"Summarise this note about {topic}.", "input": f"Note {i}: {topic} — "
                         "short and plain.", "output": answer})  # fmt: skip
        elif i % 3 == 1:
            rows.append({"instruction": f"Write {i % 4 + 1} lines about {topic}.", "output": answer})
        else:
            rows.append({"messages": [
                {"role": "system", "content": "You are brief and exact."},
                {"role": "user", "content": f"What is {topic}?"},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": "And one more fact?"},
                {"role": "assistant", "content": f"One more: {topic} has {i} letters in my notes."},
            ]})  # fmt: skip
    return rows


def pair_rows(n: int) -> list[dict]:
    return [
        {"prompt": f"Explain {TOPICS[i % len(TOPICS)]} in one sentence ({i}).",
         "chosen": f"{TOPICS[i % len(TOPICS)].capitalize()} is explained here, plainly, in case {i}.",
         "rejected": "no"}
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ecosystem(tmp_path_factory):
    """A warehouse with snapshots `sft` (40 rows) and `pairs` (16 preference pairs)."""
    folder = tmp_path_factory.mktemp("ecosystem")
    wh = factory.init(folder / "wh")
    rows = instruction_rows(40)  # one file per shape: a file holds one kind of record
    factory.import_file(
        wh, str(write_jsonl(folder / "alpaca.jsonl", [r for r in rows if "messages" not in r]))
    )
    factory.import_file(wh, str(write_jsonl(folder / "chats.jsonl", [r for r in rows if "messages" in r])))
    factory.import_file(wh, str(write_jsonl(folder / "pairs.jsonl", pair_rows(16))))
    wh.create_snapshot("sft", where="rejected IS NULL")
    wh.create_snapshot("pairs", where="rejected IS NOT NULL")
    yield wh
    wh.close()


@pytest.fixture(scope="session")
def llamafactory_cli() -> Path:
    return installed(LLAMAFACTORY, "llamafactory-env", "ecosystem-install")


@pytest.fixture(scope="session")
def axolotl_cli() -> Path:
    return installed(AXOLOTL, "axolotl-env", "ecosystem-install")


def run_tool(bin_folder: Path, program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a tool of an environment as a user's shell would (its venv first on PATH: axolotl launches
    `accelerate` from PATH; offline), in `cwd`; it must succeed (its output's end is shown if not)."""
    env = {**os.environ, "PATH": f"{bin_folder}{os.pathsep}{os.environ.get('PATH', '')}", **OFFLINE}
    done = subprocess.run([str(bin_folder / program), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
