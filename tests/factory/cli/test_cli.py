"""The `factory` command as a user runs it: real subprocesses on a real warehouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import alpaca, write_jsonl

FACTORY = [sys.executable, "-m", "factory.cli"]


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "FACTORY_WAREHOUSE": str(cwd / "wh"), "COLUMNS": "200"}
    proc = subprocess.run([*FACTORY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    run("init", cwd=cwd)
    write_jsonl(cwd / "tasks.jsonl", alpaca(40))
    (cwd / "chats.json").write_text(
        json.dumps([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}])
    )
    pl.DataFrame(
        {"question": ["Why?", "How?"], "good": ["Because.", "Carefully."], "bad": ["No.", "Badly."]}
    ).write_parquet(cwd / "prefs.parquet")
    return cwd


def test_walkthrough(session):
    cwd = session
    out = run("import", "tasks.jsonl", "--source", "seeds", cwd=cwd).stdout
    assert "detected format: alpaca" in out and "40 new row(s)" in out
    again = run("import", "tasks.jsonl", "--source", "seeds", cwd=cwd).stdout
    assert "0 new row(s)" in again and "40 already in the warehouse" in again
    assert (
        "1 new row(s)"
        in run("import", "chats.json", "--format", "sharegpt", "--source", "forum", cwd=cwd).stdout
    )
    prefs = run(
        "import",
        "prefs.parquet",
        "--format",
        "preference",
        "--map",
        "prompt=question,chosen=good,rejected=bad",
        cwd=cwd,
    ).stdout
    assert "2 new row(s)" in prefs
    table = run(
        "sql", "SELECT source, generator, count(*) AS n FROM rows GROUP BY ALL ORDER BY n DESC", cwd=cwd
    ).stdout
    assert "seeds" in table and "40" in table and "forum" in table
    assert "43 rows" in run("snapshot", "create", "base", "-m", "first cut", cwd=cwd).stdout
    short = run(
        "snapshot", "create", "short", "--from", "base", "--where", "length(output) < 17", cwd=cwd
    ).stdout
    assert "snapshot short from base:" in short
    listing = run("snapshot", "list", cwd=cwd).stdout
    assert "base" in listing and "short" in listing and "first cut" in listing
    show = run("snapshot", "show", "short", cwd=cwd).stdout
    assert "by source" in show and "length in characters" in show
    diff = run("snapshot", "diff", "base", "short", cwd=cwd).stdout
    assert "+0 added" in diff and "removed" in diff
    assert "instruction" in run("sql", "SELECT * FROM snapshot('short') LIMIT 5", cwd=cwd).stdout
    markup_like = run("sql", "SELECT '[bold]x[/bold] [/oops]' AS text", cwd=cwd).stdout
    assert "[bold]x[/bold] [/oops]" in markup_like  # data is printed as it is
    exported = run(
        "export",
        "short",
        "--format",
        "sharegpt",
        "--out",
        "out",
        "--eval-split",
        "0.05",
        "--seed",
        "0",
        cwd=cwd,
    ).stdout
    assert "exported short as sharegpt" in exported and (cwd / "out" / "train.json").exists()
    run("export", "short", "--format", "llamafactory", "--out", "lf", cwd=cwd)
    assert json.loads((cwd / "lf" / "dataset_info.json").read_text())["short"]["formatting"] == "sharegpt"
    log = run("log", cwd=cwd).stdout
    assert "import: tasks.jsonl" in log and "snapshot: create base" in log


def test_sql_is_read_only_and_writes_files(session):
    cwd = session
    bad = run("sql", "DELETE FROM rows", cwd=cwd, ok=False)
    assert bad.returncode == 1 and "factory sql is read-only" in bad.stderr
    run(
        "sql", "SELECT id, instruction FROM rows ORDER BY id", "--format", "csv", "--out", "rows.csv", cwd=cwd
    )
    assert pl.read_csv(cwd / "rows.csv").height >= 40
    run("sql", "SELECT id FROM rows", "--format", "parquet", "--out", "rows.parquet", cwd=cwd)
    assert pl.read_parquet(cwd / "rows.parquet").height >= 40
    as_json = run(
        "sql", "SELECT count(*) AS n FROM rows WHERE source = 'seeds'", "--format", "json", cwd=cwd
    ).stdout
    assert json.loads(as_json) == [{"n": 40}]
    wrong = run("sql", "SELECT nope FROM rows", cwd=cwd, ok=False)
    assert wrong.returncode == 1 and "nope" in wrong.stderr


def test_errors_are_one_clear_line(session):
    cwd = session
    (cwd / "bad.jsonl").write_text('{"instruction": "x", "output": 5}\n')
    bad = run("import", "bad.jsonl", cwd=cwd, ok=False)
    assert bad.returncode == 1
    assert "bad.jsonl:1: field 'output': must be a string, got number [non_string]" in bad.stderr
    assert "--on-error skip" in bad.stderr
    skipped = run("import", "bad.jsonl", "--on-error", "skip", "--rejects", "rej.csv", cwd=cwd)
    assert "1 record(s) rejected" in skipped.stdout and (cwd / "rej.csv").exists()
    bad_map = run("import", "tasks.jsonl", "--map", "prompt", cwd=cwd, ok=False)
    assert "--map: 'prompt' is not target=source" in bad_map.stderr
    missing = run("snapshot", "show", "nope", cwd=cwd, ok=False)
    assert "no snapshot named 'nope'" in missing.stderr
    no_wh = subprocess.run(
        [*FACTORY, "sql", "SELECT 1", "--warehouse", str(cwd / "elsewhere")], capture_output=True, text=True
    )
    assert no_wh.returncode == 1 and "factory init --warehouse" in no_wh.stderr


def test_plugins_lists_the_human_importer(session):
    out = run("plugins", cwd=session).stdout
    assert "generator" in out and "human" in out and "generators.human:plugin" in out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "factory"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "import" in proc.stdout and "snapshot" in proc.stdout


def test_generate_human_is_the_importer_and_errors_are_one_line(session):
    cwd = session
    write_jsonl(cwd / "more.jsonl", alpaca(3, prefix="more"))
    made = run("generate", "human", "--set", "path=more.jsonl", "--set", "source=more", cwd=cwd)
    assert made.returncode == 0
    counted = run("sql", "SELECT count(*) AS n FROM rows WHERE source = 'more'", "--format", "csv", cwd=cwd)
    assert counted.stdout.split() == ["n", "3"]
    no_path = run("generate", "human", cwd=cwd, ok=False)
    assert no_path.returncode == 1 and "factory import PATH" in no_path.stderr
    typo = run("filter", "heuristics", "--set", "max_repitition=0.5", cwd=cwd, ok=False)
    assert typo.returncode == 1 and "unknown setting 'max_repitition'" in typo.stderr
    for failed in (no_path, typo, run("sql", "SELECT nope FROM rows", cwd=cwd, ok=False)):
        assert "Traceback" not in failed.stderr and failed.stderr.startswith("error: "), failed.stderr


def test_an_unexpected_error_is_a_bug_and_debug_shows_its_traceback(session, monkeypatch, capsys):
    from factory.cli import common, main

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a plugin's bug")

    monkeypatch.setattr(common, "console", broken)  # printing fails: not a FactoryError
    argv = ["plugins"]
    for debug in (False, True):
        with pytest.raises(SystemExit) as stopped:
            main([*argv, "--debug"] if debug else argv)
        assert stopped.value.code == 1
        err = capsys.readouterr().err
        if debug:
            assert "Traceback" in err and "KeyError" in err
        else:
            assert "unexpected KeyError" in err and "--debug" in err and "Traceback" not in err
