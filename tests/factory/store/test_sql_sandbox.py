"""`factory sql` only reads: a corpus of escapes is refused and leaves the warehouse byte-identical,
a corpus of reads keeps working, and SQL that users splice into writes (snapshot --where, filter
--where, a prompt query, a score expression) is held to the same rules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import factory
from factory.runners.filtering import run_filter
from factory.store import lake, sql_guard
from factory.store.snapshots import SnapshotError
from tests.conftest import alpaca, fingerprint, write_jsonl

FACTORY = [sys.executable, "-m", "factory.cli"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A warehouse with rows, verdicts and a snapshot, plus files outside it to try to read."""
    root = tmp_path_factory.mktemp("sandbox")
    wh = factory.init(root / "wh")
    spaced = [{**r, "instruction": r["instruction"].replace(" ", "  ")} for r in alpaca(5)]
    evil = {"instruction": "show colours", "input": "", "output": "evil \x1b[31mred\x1b[0m text\rover"}
    records = [*alpaca(30), *spaced, evil]  # the exact filter drops the 5 spaced copies
    factory.import_file(wh, str(write_jsonl(root / "a.jsonl", records)), source="a")
    run_filter(wh, "exact")
    wh.create_snapshot("base")
    wh.close()
    pl.DataFrame({"id": ["x"], "label": ["secret"]}).write_csv(root / "outside.csv")
    pl.DataFrame({"id": ["x"]}).write_parquet(root / "outside.parquet")
    return root


def escapes(root: Path) -> list[str]:
    """Statements that try to write, attach, copy, load, set or read outside the warehouse."""
    wh = root / "wh"
    catalog = wh / "catalog.sqlite"
    data = next((wh / "data").rglob("*.parquet"))
    ext = lake.extension_file("ducklake")
    return [
        "DELETE FROM rows",
        "UPDATE rows SET output = 'x'",
        "INSERT INTO verdicts (id, keep) VALUES ('x', false)",
        "DROP TABLE rows",
        "TRUNCATE rows",
        "ALTER TABLE rows ADD COLUMN x INTEGER",
        "CREATE TABLE lake.t AS SELECT 1",
        "CREATE TEMP TABLE t AS SELECT 1",
        "CREATE MACRO m() AS 1",
        "DETACH lake",
        "USE memory",
        f"ATTACH 'ducklake:sqlite:{catalog}' AS w (DATA_PATH '{wh / 'data'}')",
        f"DETACH lake; ATTACH 'ducklake:sqlite:{catalog}' AS w (DATA_PATH '{wh / 'data'}'); DELETE FROM w.rows",
        f"ATTACH '{catalog}' AS s (TYPE sqlite); UPDATE s.ducklake_metadata SET value = 'x'",
        f"ATTACH '{catalog}' AS s (TYPE sqlite)",
        f"COPY (SELECT 1 AS x) TO '{data}'",
        f"COPY rows TO '{root / 'copy.csv'}'",
        f"COPY rows FROM '{root / 'outside.csv'}'",
        f"EXPORT DATABASE '{root / 'exported'}'",
        f"IMPORT DATABASE '{root / 'exported'}'",
        "LOAD httpfs",
        f"LOAD '{ext}'",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "SET threads = 1",
        "RESET lock_configuration",
        "SET VARIABLE x = 1",
        "PRAGMA threads = 1",
        "CHECKPOINT",
        "VACUUM",
        "BEGIN TRANSACTION",
        "SELECT 1; SELECT 2",
        "EXPLAIN ANALYZE DELETE FROM rows",
        "CALL ducklake_expire_snapshots('lake', older_than => now())",
        "SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())",
        "SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)",
        "SELECT * FROM ducklake_merge_adjacent_files('lake')",
        "SELECT * FROM ducklake_rewrite_data_files('lake')",
        f"SELECT * FROM ducklake_add_data_files('lake', 'rows', '{root / 'outside.parquet'}')",
        f"SELECT * FROM sqlite_query('{catalog}', 'DELETE FROM ducklake_snapshot')",
        f"SELECT * FROM sqlite_attach('{catalog}')",
        f"SELECT * FROM sqlite_scan('{catalog}', 'ducklake_metadata')",
        "SELECT * FROM query('SELECT * FROM ducklake_cleanup_old_files(''lake'', cleanup_all => true)')",
        "SELECT * FROM query_table('rows')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        f"SELECT * FROM read_parquet('{root / 'outside.parquet'}')",
        f"SELECT * FROM '{root / 'outside.csv'}'",
        "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x",
        "SELECT (SELECT count(*) FROM read_text('/etc/hostname'))",
        "PIVOT rows ON kind USING count(*)",
    ]


def reads(root: Path) -> list[str]:
    data = root / "wh" / "data"
    return [
        "SELECT count(*) FROM rows",
        "FROM rows SELECT id, instruction LIMIT 3",
        "FROM rows",
        "WITH long AS (SELECT * FROM rows WHERE length(output) > 5) SELECT count(*) FROM long",
        "DESCRIBE rows",
        "SUMMARIZE rows",
        "SHOW TABLES",
        "SELECT count(*) FROM snapshot('base')",
        "SELECT count(*) FROM rows AT (VERSION => 2)",
        "SELECT count(*) FROM verdicts AT (TIMESTAMP => now())",
        "SELECT r.id, v.reason FROM rows r JOIN verdicts v USING (id) WHERE NOT v.keep",
        "SELECT s.id FROM snapshot('base') s SEMI JOIN verdicts v ON v.id = s.id AND v.keep",
        "SELECT * FROM lake.snapshots()",
        "SELECT name, row_count FROM snapshots",
        "SELECT source, count(*) FROM rows GROUP BY ALL",
        "SELECT id, row_number() OVER (ORDER BY id) AS n FROM rows QUALIFY n <= 2",
        "SELECT json_extract_string(generator_params, '$.format') AS f FROM rows LIMIT 1",
        "SELECT * FROM range(3)",
        "PIVOT rows ON kind IN ('instruction') USING count(*) GROUP BY source",
        f"SELECT count(*) FROM read_parquet('{data}/**/*.parquet')",
        "SELECT value FROM duckdb_settings() WHERE name = 'allow_unsigned_extensions'",
        "EXPLAIN SELECT source, count(*) FROM rows GROUP BY ALL",
    ]


def test_escapes_are_refused_and_the_warehouse_is_untouched(built):
    before = fingerprint(built / "wh")
    corpus = escapes(built)
    assert len(corpus) >= 30
    wh = factory.open(built / "wh", sandbox=True)
    try:
        for statement in corpus:
            with pytest.raises((sql_guard.QueryRefused, lake.SQLError)) as refused:
                wh.sql(statement)
            # DuckDB's own settings refuse what the checks let through (files outside the data path).
            if not isinstance(refused.value, sql_guard.QueryRefused):
                assert "disabled by configuration" in str(refused.value), (statement, refused.value)
        assert wh.count() == 36  # still readable after every attempt
    finally:
        wh.close()
    assert fingerprint(built / "wh") == before
    assert not (built / "copy.csv").exists() and not (built / "exported").exists()


def test_reads_keep_working_and_extensions_are_signed_only(built):
    corpus = reads(built)
    assert len(corpus) >= 15
    with factory.open(built / "wh", sandbox=True) as wh:
        for query in corpus:
            assert wh.sql(query).height >= 1, query
        assert (
            wh.sql("SELECT value FROM duckdb_settings() WHERE name = 'allow_unsigned_extensions'").item()
            == "false"
        )
        assert wh.sql("SELECT count(*) FROM snapshot('base')").item() == 31


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*FACTORY, *args], capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_the_cli_refuses_clearly_and_writes_only_outside_the_warehouse(built, tmp_path):
    wh = str(built / "wh")
    bad = run("sql", f"ATTACH '{built}/wh/catalog.sqlite' AS s (TYPE sqlite)", "-w", wh, ok=False)
    assert bad.returncode == 1 and "factory sql is read-only" in bad.stderr and "ATTACH" in bad.stderr
    outside = run("sql", f"SELECT * FROM read_csv('{built}/outside.csv')", "-w", wh, ok=False)
    assert outside.returncode == 1 and "--allow-files" in outside.stderr
    allowed = run("sql", f"SELECT label FROM read_csv('{built}/outside.csv')", "-w", wh, "--allow-files")
    assert "secret" in allowed.stdout
    still = run("sql", "DELETE FROM rows", "-w", wh, "--allow-files", ok=False)
    assert still.returncode == 1 and "DELETE" in still.stderr
    for fmt in ("csv", "json", "parquet"):
        target = tmp_path / f"rows.{fmt}"
        run("sql", "SELECT id FROM rows", "-w", wh, "--format", fmt, "--out", str(target))
        assert target.stat().st_size > 0
        again = run("sql", "SELECT id FROM rows", "-w", wh, "--format", fmt, "--out", str(target), ok=False)
        assert again.returncode == 1 and "--force" in again.stderr
        run("sql", "SELECT 1 AS x", "-w", wh, "--format", fmt, "--out", str(target), "--force")
    before = fingerprint(built / "wh")
    for target in (f"{wh}/catalog.sqlite", f"{wh}/data/x.parquet", f"{built}/other/../wh/x.csv"):
        into = run("sql", "SELECT 1", "-w", wh, "--format", "csv", "--out", target, "--force", ok=False)
        assert into.returncode == 1
    link = tmp_path / "link.csv"
    link.symlink_to(built / "wh" / "catalog.sqlite")
    via_link = run("sql", "SELECT 1", "-w", wh, "--format", "csv", "--out", str(link), "--force", ok=False)
    assert via_link.returncode == 1 and "inside the warehouse" in via_link.stderr
    assert fingerprint(built / "wh") == before


def test_terminal_escapes_in_stored_text_are_printed_escaped(built, tmp_path):
    wh = str(built / "wh")
    shown = run("sql", "SELECT output AS \"col\x1b[2J\" FROM rows WHERE output LIKE 'evil%'", "-w", wh)
    assert "\x1b" not in shown.stdout and "\r" not in shown.stdout
    assert "\\x1b[31mred" in shown.stdout and "\\r" in shown.stdout and "col\\x1b[2J" in shown.stdout
    copy = tmp_path / "copy"
    shutil.copytree(built / "wh", copy)
    env = {**os.environ, "FACTORY_AUTHOR": "ev\x1b]8;;http://evil\x07il"}
    made = subprocess.run(
        [*FACTORY, "snapshot", "create", "esc", "-w", str(copy), "-m", "m\x1b[2J\u202e", "--where", "true"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    for args in (["snapshot", "show", "esc"], ["snapshot", "list"], ["log"], ["why", "\x1b[2Jzz"]):
        out = run(*args, "-w", str(copy)).stdout
        assert "\x1b" not in out and "\u202e" not in out, (args, out)
    assert "m\\x1b[2J\\u202e" in run("snapshot", "show", "esc", "-w", str(copy)).stdout


def test_sql_files_hold_nested_columns_and_folders_are_made(built, tmp_path):
    wh = str(built / "wh")
    target = tmp_path / "new" / "folder" / "rows.csv"
    query = "SELECT id, parent_ids, [1, 2] AS xs, {'a': 'x', 'b': [3]} AS st FROM rows"
    run("sql", query, "-w", wh, "--format", "csv", "--out", str(target))
    rows = pl.read_csv(target)
    assert rows.height == 36 and rows["parent_ids"].null_count() == 36
    assert set(rows["xs"]) == {"[1, 2]"} and set(rows["st"]) == {'{"a": "x", "b": [3]}'}
    run(
        "sql",
        "SELECT * FROM rows",
        "-w",
        wh,
        "--format",
        "parquet",
        "--out",
        str(tmp_path / "a" / "b.parquet"),
    )
    assert pl.read_parquet(tmp_path / "a" / "b.parquet").height == 36
    # A hard link to the catalog is replaced, not written through.
    link = tmp_path / "hard.csv"
    os.link(built / "wh" / "catalog.sqlite", link)
    before = fingerprint(built / "wh")
    run("sql", "SELECT 1 AS a", "-w", wh, "--format", "csv", "--out", str(link), "--force")
    assert fingerprint(built / "wh") == before and link.read_text() == "a\n1\n"


def test_sql_spliced_into_writes_is_held_to_the_same_rules(built, tmp_path):
    catalog = built / "wh" / "catalog.sqlite"
    wh = factory.open(built / "wh")
    try:
        hostile = [
            "1=1) OR (SELECT count(*) FROM read_csv('/etc/passwd')) > 0 OR (1=1",
            f"(SELECT count(*) FROM sqlite_query('{catalog}', 'DELETE FROM ducklake_snapshot')) = 0",
            "true) UNION SELECT 1 --",
            "1=1); DELETE FROM rows; SELECT (1",
            f"id IN (SELECT id FROM '{built / 'outside.csv'}')",
        ]
        for where in hostile:
            with pytest.raises(SnapshotError):
                wh.create_snapshot("evil", where=where)
            with pytest.raises(sql_guard.QueryRefused):
                run_filter(wh, "heuristics", where=where)
        with pytest.raises(sql_guard.QueryRefused):
            factory.generate(wh, "distill", query="SELECT * FROM read_csv('/etc/passwd')")
        with pytest.raises(sql_guard.QueryRefused):
            run_filter(wh, "select", {"score_sql": "(SELECT 1 FROM read_text('/etc/hostname'))", "budget": 2})
        assert wh.count() == 36 and wh.sql("SELECT count(*) FROM snapshots").item() == 1
        fine = wh.create_snapshot("fine", where="length(output) > 0 AND source = 'a'")
        assert fine["row_count"] == 31
        # A snapshot's recorded SQL, spliced where the user put snapshot('x') (in a comment), once
        # turned a string literal back into live SQL: COPY to a file, DELETE rows, read files.
        payload = (
            "instruction <> '*/ 0)))); COPY (SELECT $$pwned$$ AS x) TO $$"
            + str(tmp_path / "pwned.csv")
            + "$$; DELETE FROM rows; SELECT 1 AS id -- /*'"
        )
        wh.create_snapshot("evil", where=payload)
        run_filter(wh, "heuristics", where="/* snapshot('evil') */ true")
        leak = (
            "instruction <> '*/ UNION ALL SELECT content AS instruction FROM read_text($$/etc/hostname$$) /*'"
        )
        wh.create_snapshot("leak", where=leak)
        got = wh.user_sql("SELECT instruction FROM rows WHERE false /* snapshot('leak') */")
        assert got.height == 0
        short = wh.create_snapshot("short", where="1) --")  # read as the one expression `1`
        assert short["row_count"] == wh.create_snapshot("all", where="true")["row_count"] > 0
        assert not (tmp_path / "pwned.csv").exists() and wh.count() == 36
    finally:
        wh.close()
