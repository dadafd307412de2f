"""Jobs: an import killed with SIGKILL leaves the warehouse consistent; a rerun lands exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

import factory
from bench.synth import write_alpaca_jsonl
from tests.conftest import import_command

ROWS = 200_000


@pytest.mark.slow
def test_sigkill_halfway_then_rerun(tmp_path):
    data = write_alpaca_jsonl(tmp_path / "big.jsonl", ROWS, seed=7)
    wh_path = tmp_path / "wh"
    factory.init(wh_path).close()
    command = import_command(data, wh_path, "--batch-rows", "10000")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = wh_path / ".staging"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if staging.exists() and any(len(list(d.glob("*.parquet"))) >= 3 for d in staging.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, (
        "the import finished before it could be killed: " + proc.stderr.read().decode()
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    with factory.open(str(wh_path), read_only=True) as wh:
        assert wh.count() == 0  # nothing half-written
        assert wh.jobs()["status"].to_list() == ["running"]

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{ROWS:,} new row(s)" in rerun.stdout
    with factory.open(str(wh_path), read_only=True) as wh:
        assert wh.count() == ROWS
        assert wh.sql("SELECT count(DISTINCT id) AS n FROM rows")["n"][0] == ROWS
        assert sorted(wh.jobs()["status"].to_list()) == ["interrupted", "succeeded"]
    assert list(staging.iterdir()) == []  # the killed job's staging files were cleaned up
