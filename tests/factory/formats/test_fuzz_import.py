"""Fuzzing `factory import --on-error skip` with 11,000 seeded cases in 45 imports: random bytes
and random mutations of valid JSONL and CSV lines. It never crashes, every line is accounted for
(read or rejected, a reject naming file:line and a code), and every good line lands."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest

import factory
from tests.racing import Race

SEED = 15
JSONL_FILES, LINES_PER_FILE = 40, 250
CSV_FILES, ROWS_PER_CSV = 5, 200


SHAPES = ["alpaca", "alpaca", "sharegpt", "openai"]


def good_record(rng: random.Random, tag: str, shape: str) -> dict:
    words = " ".join(
        rng.choice(["data", "model", "café", "数据", "emoji 🙂", "x", "tab\there"]) for _ in range(5)
    )
    if shape == "alpaca":
        return {"instruction": f"{tag} {words}?", "input": rng.choice(["", "ctx"]), "output": f"{words}."}
    if shape == "sharegpt":
        return {
            "conversations": [{"from": "human", "value": f"{tag} {words}"}, {"from": "gpt", "value": words}]
        }
    return {
        "messages": [{"role": "user", "content": f"{tag} {words}"}, {"role": "assistant", "content": words}]
    }


def mutate(rng: random.Random, line: bytes) -> bytes:
    """One random corruption of a valid line (or a line of random bytes)."""
    kind = rng.randrange(12)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120))).replace(b"\n", b" ")
    if kind == 1 and line:
        k = rng.randrange(len(line))
        return line[:k] + bytes([rng.randrange(256)]) + line[k + 1 :]
    if kind == 2 and line:
        k = rng.randrange(len(line))
        return line[:k] + line[k + 1 :]
    if kind == 3:
        return line[: rng.randrange(len(line) + 1)]
    if kind == 4:
        k = rng.randrange(len(line) + 1)
        return (
            line[:k]
            + rng.choice([b"\\ud800", b"\\udfff", b"\x00", b"\xef\xbb\xbf", b"\\u0000", b"\x1b[2J"])
            + line[k:]
        )
    if kind == 5:
        return line.replace(b'"output": ', b'"output": 5, "output": ', 1)
    if kind == 6:
        return line.replace(b'": "', b'": ["', 1).replace(b'", "', b'"], "', 1)
    if kind == 7:
        return rng.choice([b"null", b"[]", b"5", b'"text"', b"{}", b"{", b"}", b"true"])
    if kind == 8:
        return line.replace(b'"', b"'")
    if kind == 9:
        return b'{"a": ' * rng.randrange(1, 400) + b"1" + b"}" * rng.randrange(400)
    if kind == 10:
        return line.replace(b"gpt", b"robot").replace(b"assistant", b"wizard")
    return line + line  # two objects on one line


def jsonl_file(rng: random.Random, path: Path, index: int) -> set[int]:
    """Write a fuzzed JSONL file; the numbers of its untouched (good, unique) lines."""
    lines, good = [], set()
    shape = SHAPES[index % len(SHAPES)]  # one format per file, as real files have
    number = 1  # a mutation may add a newline byte, so count the lines the file really has
    for n in range(LINES_PER_FILE):
        line = json.dumps(good_record(rng, f"f{index} l{n}", shape), ensure_ascii=rng.random() < 0.5).encode()
        if rng.random() < 0.5:
            good.add(number)
        else:
            line = mutate(rng, line)
        lines.append(line)
        number += 1 + line.count(b"\n")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return good


def csv_file(rng: random.Random, path: Path, index: int) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["instruction", "input", "output"])
    for n in range(ROWS_PER_CSV):
        record = good_record(random.Random(n), f"c{index} r{n}", "alpaca")
        row = [record.get("instruction", "q"), record.get("input", ""), record.get("output", "a")]
        text = buffer.getvalue()
        writer.writerow(row)
        if rng.random() < 0.5:
            mutated = mutate(rng, buffer.getvalue()[len(text) :].encode()).decode("utf-8", "replace")
            buffer = io.StringIO(text + mutated.rstrip("\n") + "\n")
            buffer.seek(0, io.SEEK_END)
            writer = csv.writer(buffer)
    path.write_text(buffer.getvalue(), encoding="utf-8", errors="surrogateescape")


@pytest.mark.slow
def test_fuzzed_files_never_crash_and_every_line_is_accounted_for(tmp_path):
    rng = random.Random(SEED)
    wh_path = tmp_path / "wh"
    factory.init(wh_path).close()
    files: list[tuple[Path, set[int] | None]] = []
    for k in range(JSONL_FILES):
        path = tmp_path / f"fuzz{k:02d}.jsonl"
        files.append((path, jsonl_file(rng, path, k)))
    for k in range(CSV_FILES):
        path = tmp_path / f"fuzz{k:02d}.csv"
        csv_file(rng, path, k)
        files.append((path, None))
    assert JSONL_FILES * LINES_PER_FILE + CSV_FILES * ROWS_PER_CSV >= 10_000 and len(files) <= 50

    race = Race(tmp_path / "runs", racers=1, rounds=len(files))  # one process runs every import
    try:
        for k, (path, good) in enumerate(files):
            rejects = tmp_path / f"rejects{k}.csv"
            args = ["import", str(path), "-w", str(wh_path), "--on-error", "skip", "--rejects", str(rejects)]
            [result] = race.round(k, [*args, "--no-progress"], timeout=120)
            printed = result["out"] + result["err"]
            assert "Traceback" not in printed, printed
            if result["code"] != 0:  # only a file with no readable record at all may stop
                assert "no records found" in printed or "cannot tell the format" in printed, printed
                continue
            read = int(printed.split(" record(s) read")[0].rsplit(" ", 1)[1].replace(",", ""))
            rejected = list(csv.DictReader(io.StringIO(rejects.read_text()))) if rejects.exists() else []
            for reject in rejected:
                origin, _, line = reject["origin"].rpartition(":")
                assert origin == str(path) and line.isdigit() and reject["code"], reject
            if good is not None:
                lines = path.read_bytes().split(b"\n")[:-1]
                nonblank = sum(1 for line in lines if line.strip())
                assert read + len({r["origin"] for r in rejected}) == nonblank
                with factory.open(wh_path, read_only=True) as wh:
                    landed = set(
                        wh.sql("SELECT origin FROM rows WHERE origin LIKE ?", [f"{path}:%"])["origin"]
                    )
                assert {f"{path}:{n}" for n in good} <= landed
    finally:
        race.close()
