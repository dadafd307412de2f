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
    run("sql", "SELECT id FROM rows", "--out", "ids.parquet", cwd=cwd)  # the extension says the format
    assert pl.read_parquet(cwd / "ids.parquet").height >= 40
    unknown = run("sql", "SELECT id FROM rows", "--out", "ids.txt", cwd=cwd, ok=False)
    assert unknown.returncode == 1 and "--out needs --format csv, json or parquet" in unknown.stderr
    as_json = run(
        "sql", "SELECT count(*) AS n FROM rows WHERE source = 'seeds'", "--format", "json", cwd=cwd
    ).stdout
    assert json.loads(as_json) == [{"n": 40}]
    wrong = run("sql", "SELECT nope FROM rows", cwd=cwd, ok=False)
    assert wrong.returncode == 1 and "nope" in wrong.stderr
    # The table names each column's type as DuckDB does (what the user writes in SQL), not polars'.
    shown = run("sql", "SELECT id, origin_line, messages, created_at FROM rows LIMIT 1", cwd=cwd).stdout
    header = shown.split("┡")[0]
    for name in ("VARCHAR", "BIGINT", "STRUCT(role VARCHAR, content VARCHAR)[]", "TIMESTAMP WITH TIME ZONE"):
        assert name in header, (name, header)
    assert "String" not in header and "Int64" not in header
    assert "String" not in run("jobs", cwd=cwd).stdout  # the other tables show names only


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


def test_a_users_mistakes_each_get_one_clear_error_line(session, tmp_path):
    cwd = session
    run("import", "tasks.jsonl", cwd=cwd)
    run("snapshot", "create", "mistakes", cwd=cwd)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    (tmp_path / "wrong.yaml").write_text("threshold: high\n")
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "factory.json").write_text("[1, 2]")
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "factory.json").write_text(
        '{"catalog": "sqlite:catalog.sqlite", "data_path": "data/"}'
    )
    (tmp_path / "garbled" / "catalog.sqlite").write_text("not a database")
    (tmp_path / "a_file").write_text("x")
    cases = {
        ("import", "tasks.jsonl", "--encoding", "klingon"): "--encoding: unknown encoding 'klingon'",
        ("filter", "minhash", "--config", str(tmp_path / "binary.yaml")): "binary.yaml: not a UTF-8 text file",
        ("filter", "minhash", "--config", str(tmp_path / "wrong.yaml")): "setting threshold: Input should be a valid number",
        ("generate", "distill"): "error: give exactly one source of prompts",
        ("snapshot", "create", "typo", "--where", "id IN (SELECT id FROM snapshot('nope'))"): "no snapshot named 'nope'",
        ("filter", "heuristics", "--where", "1) UNION SELECT 1 --"): "--where '1) UNION SELECT 1 --'",
        ("sql", "SELECT 1", "-w", str(tmp_path / "listed")): "factory.json: not a valid warehouse config",
        ("sql", "SELECT 1", "-w", str(tmp_path / "a_file")): "is a file, not a warehouse folder",
        ("init", "-w", str(tmp_path / "new"), "--catalog", "bogus:x"): "--catalog: catalog 'bogus:x' is not one of",
        ("sql", "SELECT 1", "-w", str(tmp_path / "garbled")): "cannot be read: it is not a database",
        ("alignment", ""): "give a row id",
        ("eval", "embedded", "--on", "mistakes", "--split", "weird"): "setting split: Input should be 'eval' or 'all'",
        ("train-config", "axolotl", "mistakes", "--out", str(tmp_path / "ax"), "--set", "stage=dpo"): "DPO needs preference pairs",
    }  # fmt: skip
    for args, message in cases.items():
        failed = run(*args, cwd=cwd, ok=False)
        assert failed.returncode == 1, (args, failed.stdout, failed.stderr)
        assert failed.stderr.startswith("error: ") and message in failed.stderr, (args, failed.stderr)
        assert "Traceback" not in failed.stderr and "Value error," not in failed.stderr, (args, failed.stderr)
    assert (
        not (tmp_path / "new").exists() and not (tmp_path / "ax").exists()
    )  # refused before anything was made
    assert (
        run("import", "prefs.parquet", "--format", "rows", cwd=cwd, ok=False).returncode == 1
    )  # named, not a crash
