"""Two processes import while a third queries in a loop for 30 s: every import commits, no query
fails or sees half a commit (every count it reads is a sum of whole imports)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import factory
from bench.synth import write_alpaca_jsonl
from tests.conftest import import_command, make_warehouse

FILES, SIZE_A, SIZE_B, SECONDS = 5, 1000, 700, 30

READER = textwrap.dedent(
    """
    import json, sys, time
    import factory
    path, seconds, a, b, files = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    whole = {i * a + j * b for i in range(files + 1) for j in range(files + 1)}
    queries, failures, torn, seen = 0, [], [], set()
    end = time.time() + seconds
    while time.time() < end:
        try:
            with factory.open(path, read_only=True) as wh:
                for _ in range(5):
                    n = int(wh.sql("SELECT count(*) AS n FROM rows")["n"][0])
                    queries += 1
                    seen.add(n)
                    if n not in whole:
                        torn.append(n)
        except Exception as exc:
            failures.append(repr(exc))
    print(json.dumps({"queries": queries, "failures": failures, "torn": torn, "seen": sorted(seen)}))
    """
)


@pytest.mark.slow
def test_two_writers_and_a_reader(tmp_path):
    wh_path = tmp_path / "wh"
    factory.init(wh_path).close()
    batches = {"a": SIZE_A, "b": SIZE_B}
    for name, size in batches.items():
        for k in range(FILES):
            write_alpaca_jsonl(tmp_path / f"{name}{k}.jsonl", size, seed=k, prefix=f"{name}{k}")
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(wh_path), str(SECONDS), str(SIZE_A), str(SIZE_B), str(FILES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    script = "; ".join(
        f"{sys.executable} -m factory.cli import {tmp_path}/{{name}}{k}.jsonl --warehouse {wh_path} --no-progress"
        for k in range(FILES)
    )
    writers = [
        subprocess.Popen(
            ["bash", "-ec", script.format(name=name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in batches
    ]
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        assert out.count("new row(s)") == FILES
    out, err = reader.communicate(timeout=SECONDS + 120)
    assert reader.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["failures"] == [] and report["torn"] == []
    assert report["queries"] > 20 and len(report["seen"]) > 2  # it really watched the imports land
    with factory.open(str(wh_path), read_only=True) as wh:
        assert wh.count() == FILES * (SIZE_A + SIZE_B)
        jobs = wh.jobs()
        assert jobs.height == 2 * FILES and set(jobs["status"]) == {"succeeded"}


@pytest.mark.slow
def test_same_file_imported_twice_at_once_lands_once(request, tmp_path, backend):
    wh_path = tmp_path / "wh"
    make_warehouse(request, wh_path, backend).close()
    data = write_alpaca_jsonl(tmp_path / "same.jsonl", 20_000, seed=3)
    command = import_command(data, wh_path)
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outs]
    assert sorted(out.count("20,000 new row(s)") for out, _ in outs) == [0, 1]
    with factory.open(str(wh_path), read_only=True) as wh:
        assert wh.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM rows").row(0) == (20_000, 20_000)
