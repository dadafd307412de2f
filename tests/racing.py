"""Real `factory` processes released at once, round after round.

Each racer is a Python process that imports the CLI (the slow part) before the race, then, for
every round, waits for that round's start file and runs `factory ARGS...` in-process, exactly as
the console script would, printing one JSON line with the exit code and what it printed. Files
are the barrier: the test writes round k's file (its arguments) and every racer starts at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RACER = r"""
import contextlib, io, json, os, sys, time
from factory.cli import main  # the heavy imports happen before the barrier
folder, rounds = sys.argv[1], int(sys.argv[2])
for k in range(rounds):
    start = os.path.join(folder, f"round-{k}.json")
    while not os.path.exists(start):
        time.sleep(0.001)
    args = json.loads(open(start).read())
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = ["factory", *args]
        try:
            main()
        except SystemExit as exc:
            code = exc.code or 0
    print(json.dumps({"round": k, "code": code, "out": out.getvalue(), "err": err.getvalue()}), flush=True)
"""


class Race:
    """`racers` processes that run one `factory` command per round, all released at once."""

    def __init__(self, folder: Path, racers: int, rounds: int, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.rounds = rounds
        self.played = 0
        folder.mkdir(parents=True, exist_ok=True)
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, str(folder), str(rounds)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **(env or {})},
            )
            for _ in range(racers)
        ]

    def round(self, k: int, args: list[str], timeout: float = 300) -> list[dict]:
        """Release round k with these arguments; every racer's result."""
        staged = self.folder / f".round-{k}.json"
        staged.write_text(json.dumps(args))
        staged.rename(self.folder / f"round-{k}.json")  # appears whole, at one instant
        results = []
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                raise RuntimeError(f"a racer died: {proc.stderr.read() if proc.stderr else ''}")
            results.append(json.loads(line))
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {k} took more than {timeout} s")
        self.played += 1
        return results

    def close(self) -> None:
        """Wait for the racers to finish their rounds; stop them if a failed test left rounds unplayed."""
        for proc in self.procs:
            if self.played < self.rounds:
                proc.kill()
            proc.wait(timeout=60)
