"""The teacher-call cache: every call's result lives in the warehouse's llm_calls table.

A call's key hashes what decides its answer (backend, model, sampling parameters,
prompt or messages, sample index), so asking again is free and a killed job that
reruns makes no call twice. Finished calls are appended at once to a journal file
beside the catalog (one JSON line each, written before the next call starts) and
moved into llm_calls in batches: when `FLUSH_EVERY` calls are pending or the oldest
has waited `FLUSH_AFTER_S`, at close, or inside the commit that lands a generator's
rows (`pending_frame` / `insert` / `committed`), so a job pays no commit per call nor
per batch of requests. Until then a call is in the journal, which reruns of the job
read through `lookup` like llm_calls; a journal left by a killed process is moved in
when the next teacher opens, so nothing a teacher answered is ever lost.
Failed attempts are recorded too (with their error), which is what makes cost and
reliability plain SQL over llm_calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from factory import errors
from factory.store import crash, schema
from factory.store.warehouse import Warehouse

JOURNALS = ".calls"
FLUSH_EVERY = 10_000  # pending calls that make a commit due (a 30k-prompt job: 3 commits)
FLUSH_AFTER_S = 60.0  # age of the oldest pending call that makes a commit due

# The llm_calls columns a journal line carries (created_at is written as ISO text).
_TYPES: dict[str, pl.DataType] = {
    "key": pl.String,
    "backend": pl.String,
    "model": pl.String,
    "params": pl.String,
    "prompt": pl.String,
    "sample": pl.Int64,
    "response": pl.String,
    "logprobs": pl.String,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "latency_s": pl.Float64,
    "finish_reason": pl.String,
    "error": pl.String,
    "job_id": pl.String,
    "created_at": pl.Datetime("us", "UTC"),
}
assert list(_TYPES) == list(schema.TABLES["llm_calls"]), "keep the journal in step with llm_calls"


def call_key(backend: str, model: str, params: str, prompt: str, sample: int) -> str:
    """The cache key of one sample: sha256 over its description (`params` is canonical JSON)."""
    text = "\x1e".join((backend, model, params, prompt, str(sample)))
    return hashlib.sha256(text.encode()).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


class CallCache:
    """Looks up answered calls and records new ones for one job."""

    def __init__(self, wh: Warehouse, job_id: str) -> None:
        self.wh = wh
        self.job_id = job_id
        self.folder = wh.folder / JOURNALS
        self.folder.mkdir(exist_ok=True)
        self.journal_path = self.folder / f"{job_id}.jsonl"
        self._journal = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115 (lives with the cache)
        self._pending: list[dict[str, Any]] = []
        self._oldest = 0.0  # time.monotonic() of the oldest pending call
        self._answers: dict[str, dict[str, Any]] = {}
        self.flush_every, self.flush_after_s = FLUSH_EVERY, FLUSH_AFTER_S
        recover_journals(wh, skip=job_id)

    def lookup(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Answered calls among `keys` (the latest success of each), from the warehouse and this job."""
        found = {k: self._answers[k] for k in keys if k in self._answers}
        wanted = [k for k in dict.fromkeys(keys) if k not in found]
        if wanted:
            with self.wh.lake.registered("wanted_keys", pl.DataFrame({"key": wanted})):
                stored = self.wh.sql(
                    "SELECT key, response, logprobs, finish_reason, prompt_tokens, completion_tokens "
                    "FROM llm_calls WHERE error IS NULL AND key IN (SELECT key FROM wanted_keys) "
                    "QUALIFY row_number() OVER (PARTITION BY key ORDER BY created_at DESC) = 1"
                )
            for record in stored.iter_rows(named=True):
                found[record["key"]] = record
        return found

    def record(self, record: dict[str, Any]) -> None:
        """Journal one finished attempt (answer or error) before anything else happens."""
        row = {k: record.get(k) for k in _TYPES}
        row["error"] = errors.scrub(row["error"])
        row["job_id"] = self.job_id
        row["created_at"] = row["created_at"] or now()
        self._journal.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        self._journal.flush()  # in the kernel's hands: a killed process loses nothing
        crash.point("teacher.call")
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append(row)
        if row["error"] is None:
            self._answers[row["key"]] = row

    def due(self) -> bool:
        """Whether enough calls are pending, or the oldest has waited long enough, to commit them."""
        return bool(self._pending) and (
            len(self._pending) >= self.flush_every or time.monotonic() - self._oldest >= self.flush_after_s
        )

    def flush(self) -> int:
        """Move this job's journaled calls into llm_calls (one commit); returns how many."""
        if not self._pending:
            return 0
        frame = self.pending_frame()
        _insert(self.wh, frame, f"llm calls: {frame.height} for job {self.job_id}")
        self.committed(frame.height)
        return frame.height

    def pending_frame(self) -> pl.DataFrame:
        """The journaled calls not in llm_calls yet, to `insert` inside another commit."""
        return _frame(self._pending)

    @staticmethod
    def insert(lk: Any, frame: pl.DataFrame) -> None:
        """Append `pending_frame()` inside a write (safe to repeat); then call `committed`."""
        if frame.height:
            _insert_into(lk, frame)

    def committed(self, count: int) -> None:
        """The first `count` pending calls are in llm_calls now: drop them from the journal."""
        del self._pending[:count]
        self._journal.truncate(0)
        self._journal.seek(0)
        for row in self._pending:  # any recorded since (none when the caller waits for its commit)
            self._journal.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        self._journal.flush()
        self._oldest = time.monotonic()

    def close(self) -> None:
        self.flush()
        self._journal.close()
        self.journal_path.unlink(missing_ok=True)


def _frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    """Records (journal lines or recorded calls) as llm_calls columns, built column by column."""
    columns = {k: [r.get(k) for r in records] for k in _TYPES}
    frame = pl.DataFrame(columns, schema_overrides=_TYPES, strict=False)
    return frame.select(pl.col(k).cast(t) for k, t in _TYPES.items())


def _insert_into(lk: Any, frame: pl.DataFrame) -> None:
    """Append calls inside a write, skipping any already stored (a journal moved in twice counts once)."""
    with lk.registered("staged_calls", frame):
        lk.execute(
            f"INSERT INTO llm_calls ({schema.column_list('llm_calls')}) SELECT s.* FROM staged_calls s "
            "ANTI JOIN llm_calls c ON c.key = s.key AND c.job_id = s.job_id AND c.created_at = s.created_at"
        )


def _insert(wh: Warehouse, frame: pl.DataFrame, message: str) -> None:
    """Append calls in a commit of their own."""
    wh.lake.write(message, lambda lk: _insert_into(lk, frame))


def _read_journal(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a journal (a line cut short by a kill is ignored)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        record["created_at"] = datetime.fromisoformat(record["created_at"])
        records.append(record)
    return records


def recover_journals(wh: Warehouse, skip: str | None = None) -> int:
    """Move calls journaled by jobs that are no longer running into llm_calls."""
    folder = wh.folder / JOURNALS
    paths = [p for p in sorted(folder.glob("*.jsonl")) if p.stem != skip] if folder.exists() else []
    if not paths:
        return 0
    running = set(wh.sql("SELECT id FROM jobs WHERE status = 'running'")["id"].to_list())
    moved = 0
    for path in paths:
        if path.stem in running:
            continue
        records = _read_journal(path)
        if records:
            _insert(wh, _frame(records), f"llm calls: {len(records)} recovered from job {path.stem}")
            moved += len(records)
        os.unlink(path)
    return moved
