"""A third-party package's plugins, registered through entry points (a dist-info folder on
PYTHONPATH, as an installed package would be): good ones work like the built-in ones, broken
ones are reported by name, and one broken package never takes the command line down."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import factory
from factory.plugins import PluginError
from tests.conftest import alpaca, write_jsonl

PACKAGE = """
from __future__ import annotations

import polars as pl
from pydantic import BaseModel, Field

from factory.plugins import FilterContext, FilterPlugin


class ShoutingConfig(BaseModel):
    threshold: float = Field(0.5, ge=0, le=1, description="share of upper-case letters that drops a row")


def run(candidates: pl.DataFrame, kept: pl.DataFrame, config: ShoutingConfig, ctx: FilterContext | None = None) -> pl.DataFrame:
    upper = candidates["output"].str.count_matches("[A-Z]") / candidates["output"].str.len_chars()
    return candidates.select("id").with_columns(keep=upper < config.threshold, reason=pl.lit("shouting"))


def crash(candidates, kept, config: ShoutingConfig, ctx: FilterContext | None = None) -> pl.DataFrame:
    return {}["no such key"]


def nothing(candidates, kept, config: ShoutingConfig, ctx: FilterContext | None = None) -> pl.DataFrame:
    return None


plugin = FilterPlugin(name="shouting", config=ShoutingConfig, run=run, summary="drops shouted answers", row_local=True)
crashing = FilterPlugin(name="crashing", config=ShoutingConfig, run=crash, summary="raises")
empty = FilterPlugin(name="empty", config=ShoutingConfig, run=nothing, summary="returns nothing")
misnamed = FilterPlugin(name="other", config=ShoutingConfig, run=run, summary="registered under another name")
"""

ENTRY_POINTS = """
[factory.filters]
shouting = myplugins.shout:plugin
crashing = myplugins.shout:crashing
empty = myplugins.shout:empty
misnamed = myplugins.shout:misnamed
gone = myplugins.missing:plugin

[factory.commands]
broken = myplugins.missing:register
"""


@pytest.fixture(scope="module")
def third_party(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("site")
    (root / "myplugins").mkdir()
    (root / "myplugins" / "__init__.py").write_text("")
    (root / "myplugins" / "shout.py").write_text(PACKAGE)
    info = root / "myplugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(ENTRY_POINTS))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def factory_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, env=env
    )


def test_third_party_plugins_work_and_broken_ones_are_named(third_party, tmp_path):
    wh = str(tmp_path / "wh")
    rows = [*alpaca(4), {"instruction": "Shout", "input": "", "output": "I AM SHOUTING AT YOU"}]
    assert factory_cli(third_party, "init", "-w", wh).returncode == 0
    assert (
        factory_cli(
            third_party, "import", str(write_jsonl(tmp_path / "a.jsonl", rows)), "-w", wh, "--no-progress"
        ).returncode
        == 0
    )
    # A broken package's command is left out with a warning; everything else still works.
    listed = factory_cli(third_party, "plugins")
    assert listed.returncode == 0 and "shouting" in listed.stdout and "myplugins 0.1" in listed.stdout
    assert "command entry point broken" in listed.stderr and "left out" in listed.stderr
    assert "failed to load" in listed.stdout  # the missing module, shown in the listing
    judged = factory_cli(third_party, "filter", "shouting", "-w", wh)
    assert judged.returncode == 0 and "kept 4, dropped 1 (shouting 1)" in judged.stdout, judged.stderr
    typo = factory_cli(third_party, "filter", "shouting", "--set", "treshold=0.9", "-w", wh)
    assert typo.returncode == 1 and "unknown setting 'treshold'" in typo.stderr
    expected = {
        "crashing": "filter plugin 'crashing' (myplugins.shout) failed: KeyError",
        "empty": "filter 'empty' must return a polars DataFrame or a FilterResult, got NoneType",
        "misnamed": "holds a plugin named 'other': register it under its own name",
        "gone": "entry point gone = myplugins.missing:plugin (factory.filters) fails to load",
    }
    for name, message in expected.items():
        failed = factory_cli(third_party, "filter", name, "-w", wh)
        assert failed.returncode == 1 and message in failed.stderr, (name, failed.stderr)
        assert "Traceback" not in failed.stderr
    debug = factory_cli(third_party, "filter", "crashing", "-w", wh, "--debug")
    assert "Traceback" in debug.stderr and "KeyError" in debug.stderr


def test_the_structure_test_checks_third_party_signatures(third_party, tmp_path):
    """The signature rule covers installed third-party plugins: a mismatched one fails it."""
    root = Path(third_party["PYTHONPATH"].split(os.pathsep)[0])
    (root / "myplugins-0.1.dist-info" / "entry_points.txt").write_text(
        "[factory.filters]\nshouting = myplugins.shout:plugin\n"
    )
    test = Path(__file__).with_name("test_structure.py")
    good = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test), "-k", "signature"],
        capture_output=True, text=True, env=third_party, cwd=tmp_path,
    )  # fmt: skip
    assert good.returncode == 0, good.stdout[-2000:]
    shout = root / "myplugins" / "shout.py"
    shout.write_text(
        shout.read_text().replace(
            "def run(candidates: pl.DataFrame, kept", "def run(rows: pl.DataFrame, kept"
        )
    )
    bad = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test), "-k", "signature"],
        capture_output=True, text=True, env=third_party, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 1 and "filter 'shouting' (myplugins.shout.run)" in bad.stdout


def test_a_filter_reads_only_the_columns_it_declares(wh, tmp_path):
    from factory.runners.filtering import rows_by_id
    from filters import minhash

    rows = [{"instruction": f"task {k}", "input": "", "output": f"answer {k}"} for k in range(3)]
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", rows)))
    read = rows_by_id(wh, "SELECT id FROM rows", columns=minhash.columns(minhash.MinHashConfig()))
    assert read.columns == ["id", "instruction", "input", "output", "_row"] and read.height == 3
    assert {"messages", "rejected", "output"} <= set(minhash.columns(minhash.MinHashConfig(key="record")))
    with pytest.raises(PluginError, match="does not have: nope"):
        rows_by_id(wh, "SELECT id FROM rows", columns=("instruction", "nope"))
