"""A warehouse whose catalog is in PostgreSQL and whose data files are in S3 (moto): the CLI
imports, filters, snapshots, exports and queries it; two "machines" (folders with their own
factory.json pointing at one catalog and bucket) write at once without losing or doubling a row;
credentials come from the environment only and never show up in a file or an error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import factory
from bench.synth import write_alpaca_jsonl
from factory.store import lake, sql_guard
from factory.store.warehouse import WarehouseError
from tests.conftest import import_command, write_jsonl
from tests.racing import Race
from tests.servers import S3Server

FACTORY = [sys.executable, "-m", "factory.cli"]


def cli(*args: str, ok: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*FACTORY, *args], capture_output=True, text=True, env=env, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def rows(n: int, tag: str) -> list[dict]:
    return [
        {"instruction": f"{tag} {i}: what is {i} plus {i}?", "input": "", "output": f"{2 * i}"}
        for i in range(n)
    ]


def local_data_files(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*.parquet") if ".staging" not in p.parts]


def test_the_cli_keeps_the_catalog_in_postgres_and_the_files_in_s3(remote_store, tmp_path):
    store = remote_store
    folder = tmp_path / "wh"
    cli("init", "-w", str(folder), "--catalog", store.catalog, "--data-path", store.data_path)
    config = (folder / "factory.json").read_text()
    assert json.loads(config) == {"catalog": store.catalog, "data_path": store.data_path}
    assert S3Server.SECRET not in config and S3Server.KEY_ID not in config
    data = write_alpaca_jsonl(tmp_path / "a.jsonl", 3000, seed=1)
    assert "3,000 new row(s)" in cli(*import_command(data, folder)[3:]).stdout
    cli("filter", "exact", "-w", str(folder))
    cli("snapshot", "create", "base", "-w", str(folder))
    out = tmp_path / "export"
    cli("export", "base", "--format", "alpaca_jsonl", "--out", str(out), "-w", str(folder))
    exported = sum(len(p.read_text().splitlines()) for p in out.rglob("*.jsonl"))
    assert exported == 3000
    counted = cli("sql", "SELECT count(*) AS n, count(DISTINCT id) AS d FROM rows", "-w", str(folder))
    assert "3000" in counted.stdout.replace(",", "")
    # The data files are in the bucket, nothing is in the folder but its config.
    keys = store.keys()
    assert any(k.startswith(f"{store.prefix}main/rows/") and k.endswith(".parquet") for k in keys), keys
    assert not local_data_files(folder)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == [".staging", "factory.json"]
    # The catalog is PostgreSQL's: DuckLake's tables, our files listed there.
    files = int(store.pg.psql("SELECT count(*) FROM ducklake_data_file", store.database))
    assert files >= 1
    with factory.open(folder, read_only=True) as wh:
        assert wh.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM rows").row(0) == (3000, 3000)
        assert wh.sql("SELECT count(*) FROM snapshot('base')").item() == 3000


def test_a_password_in_the_catalog_string_is_refused_and_never_written(tmp_path, monkeypatch):
    monkeypatch.delenv("FACTORY_CATALOG", raising=False)
    password = "hunter2-very-secret"
    for catalog in (
        f"postgres:dbname=x host=127.0.0.1 user=u password={password}",
        f"postgres:dbname=x host=127.0.0.1 user=u PASSWORD = '{password}'",
        f"postgres:postgresql://u:{password}@127.0.0.1/x",
        f"postgres:postgresql://u@127.0.0.1/x?password={password}",
        f"postgres:postgresql://u@127.0.0.1/x?%70assword={password}",  # libpq decodes the key
        f"postgres:dbname=x host=127.0.0.1 user=u sslpassword={password}",
    ):
        with pytest.raises(WarehouseError) as refused:
            factory.init(tmp_path / "wh", catalog=catalog, data_path="s3://b/p/")
        assert password not in str(refused.value) and "PGPASSWORD" in str(refused.value), refused.value
        assert not (tmp_path / "wh" / "factory.json").exists()
        proc = cli("init", "-w", str(tmp_path / "wh"), "--catalog", catalog, ok=False)
        assert proc.returncode == 1 and password not in proc.stdout + proc.stderr
        assert "PGPASSWORD" in proc.stderr and "~/.pgpass" in proc.stderr
    # A config written by hand with a password is refused on open too, without showing it.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "factory.json").write_text(
        json.dumps({"catalog": f"postgres:dbname=x password={password}", "data_path": "data/"})
    )
    with pytest.raises(WarehouseError, match="PGPASSWORD") as refused:
        factory.open(tmp_path / "old")
    assert password not in str(refused.value)
    # One from the environment is refused as the environment's, not the (clean) config file's.
    factory.init(tmp_path / "clean").close()
    monkeypatch.setenv("FACTORY_CATALOG", f"postgres:dbname=x sslpassword={password}")
    with pytest.raises(WarehouseError) as refused:
        factory.open(tmp_path / "clean")
    assert str(refused.value).startswith("$FACTORY_CATALOG:") and password not in str(refused.value)
    monkeypatch.setenv("FACTORY_CATALOG", f"postgres:dbname=x password={password}")
    with pytest.raises(WarehouseError, match="never stores credentials"):
        factory.open(tmp_path / "old")


def test_errors_never_show_the_secret_and_say_which_variables_to_set(remote_store, tmp_path, monkeypatch):
    wh = remote_store.init(tmp_path / "wh")
    try:
        with pytest.raises(lake.SQLError) as missing:  # DuckDB's message quotes the query
            wh.sql(f'SELECT * FROM "{S3Server.SECRET}"')
        assert S3Server.SECRET not in str(missing.value) and "[redacted]" in str(missing.value)
        with pytest.raises(lake.SQLError) as other:
            wh.sql(f"SELECT * FROM read_parquet('s3://no-such-bucket-{S3Server.SECRET}/x.parquet')")
        text = str(other.value)
        assert S3Server.SECRET not in text and "AWS_ACCESS_KEY_ID" in text and "AWS_ENDPOINT_URL" in text
    finally:
        wh.close()
    # No key in the environment: DuckDB's defaults (anonymous), and a failure names the variables.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("FACTORY_DATA_PATH", "s3://no-such-bucket/lake/")
    with factory.open(tmp_path / "wh") as anonymous:
        assert anonymous.count() == 0  # the catalog is readable; the files are not reached yet
        with pytest.raises(lake.LakeError, match="AWS_SECRET_ACCESS_KEY"):
            factory.import_file(anonymous, str(write_jsonl(tmp_path / "a.jsonl", rows(50, "a"))))


@pytest.fixture
def sandboxed(remote_store, tmp_path):
    """A remote warehouse with rows, its SQL sandbox, and objects beside its prefix to try to read."""
    store = remote_store
    with store.init(tmp_path / "wh") as wh:
        factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", rows(500, "a"))))
        wh.create_snapshot("base")
    client = store.s3.client()
    other = store.s3.create_bucket(f"{store.bucket}-other")
    for bucket, key in ((other, "x.parquet"), (store.bucket, "x.parquet"), (store.bucket, "lake2/x.parquet")):
        client.put_object(Bucket=bucket, Key=key, Body=next(iter(local_parquet(tmp_path))).read_bytes())
    before = store.keys() + store.s3.keys(other)
    wh = factory.open(tmp_path / "wh", sandbox=True)
    yield store, wh, other
    wh.close()
    assert store.keys() + store.s3.keys(other) == before  # nothing written anywhere


def local_parquet(tmp_path: Path) -> list[Path]:
    target = tmp_path / "outside.parquet"
    if not target.exists():
        import polars as pl

        pl.DataFrame({"id": ["x"], "label": ["outside"]}).write_parquet(target)
    return [target]


def test_the_sandbox_reads_its_own_prefix_only(sandboxed, tmp_path):
    store, wh, other = sandboxed
    own = f"s3://{store.bucket}/{store.prefix}"
    assert wh.sql("SELECT count(*) FROM rows").item() == 500
    assert wh.sql(f"SELECT count(*) FROM read_parquet('{own}main/rows/*.parquet')").item() == 500
    assert wh.sql(f"SELECT count(*) FROM glob('{own}**/*.parquet')").item() >= 2  # rows, snapshot_rows
    assert wh.sql(f"SELECT count(*) FROM read_parquet(['{own}main/rows/*.parquet'])").item() == 500
    assert wh.sql("SELECT count(*) FROM snapshot('base')").item() == 500
    refused = [
        f"SELECT * FROM read_parquet('s3://{other}/x.parquet')",
        f"SELECT * FROM 's3://{other}/x.parquet'",
        f"SELECT * FROM read_parquet('s3://{store.bucket}/x.parquet')",
        f"SELECT * FROM read_parquet('s3://{store.bucket}/lake2/x.parquet')",  # a prefix of the prefix
        f"SELECT * FROM read_parquet('{own}../x.parquet')",  # DuckDB resolves .. after its check
        f"SELECT * FROM read_parquet('{own}./../lake2/x.parquet')",
        f"SELECT * FROM '{own}../x.parquet'",
        f"SELECT * FROM read_parquet(['{own}main/rows/a.parquet', '{own}../x.parquet'])",
        f"SELECT * FROM read_parquet('{own}' || '../x.parquet')",
        f"SELECT * FROM read_parquet(concat('{own}', chr(46), chr(46), '/x.parquet'))",
        f"SELECT * FROM glob('s3://{store.bucket}/**')",
        f"SELECT * FROM read_parquet('{local_parquet(tmp_path)[0]}')",
        "SELECT * FROM read_text('/etc/hostname')",
        f"COPY (SELECT 1 AS x) TO '{own}main/rows/evil.parquet'",
        f"COPY (SELECT 1 AS x) TO '{tmp_path / 'copy.csv'}'",
        f"COPY rows TO 's3://{other}/copy.parquet'",
        "DELETE FROM rows",
        "INSERT INTO verdicts (id, keep) VALUES ('x', false)",
        "CREATE TABLE lake.t AS SELECT 1",
        "DROP TABLE rows",
        f"ATTACH 'ducklake:{store.catalog}' AS w (DATA_PATH '{own}')",
        f"SELECT * FROM postgres_query('dbname={store.database} host=127.0.0.1 port={store.pg.port} "
        "user=factory', 'DELETE FROM ducklake_snapshot')",
        f"SELECT * FROM postgres_scan('host=127.0.0.1 port={store.pg.port} user=factory', 'public', 'x')",
        "SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)",
        "SET enable_external_access = true",
        "SET s3_endpoint = 'evil.example'",
        "LOAD httpfs",
        "FROM duckdb_secrets()",
        # DuckDB takes s3_endpoint (and keys) from a URL's query: the signed request, with the
        # session token, would go to any host the query names.
        f"SELECT * FROM read_csv('{own}x.csv?s3_endpoint=127.0.0.1:9&s3_use_ssl=false')",
        f"SELECT * FROM '{own}x.csv?s3_access_key_id=other'",
        f"SELECT * FROM read_parquet('{own}main/rows/#x')",
    ]
    for statement in refused:
        with pytest.raises((sql_guard.QueryRefused, lake.SQLError)) as caught:
            wh.sql(statement)
        if not isinstance(caught.value, sql_guard.QueryRefused):  # then DuckDB's own settings refused it
            assert "disabled by configuration" in str(caught.value), (statement, caught.value)
    assert not (tmp_path / "copy.csv").exists() and wh.count() == 500
    # The secret is in DuckDB's memory only, and DuckDB itself does not show it.
    secrets = wh.lake.con.execute("SELECT secret_string FROM duckdb_secrets()").fetchall()
    assert secrets and all("secret=redacted" in s and S3Server.SECRET not in s for (s,) in secrets)
    settings = wh.sql("SELECT name, value FROM duckdb_settings()")
    assert not any(S3Server.SECRET in str(v) for v in settings["value"])


def test_factory_sql_on_the_remote_warehouse(sandboxed, tmp_path):
    store, _, other = sandboxed
    folder = str(tmp_path / "wh")
    own = f"s3://{store.bucket}/{store.prefix}"
    ok = cli("sql", f"SELECT count(*) AS n FROM read_parquet('{own}main/rows/**/*.parquet')", "-w", folder)
    assert "500" in ok.stdout
    outside = cli("sql", f"SELECT * FROM read_parquet('s3://{other}/x.parquet')", "-w", folder, ok=False)
    assert outside.returncode == 1 and "--allow-files" in outside.stderr
    allowed = cli(
        "sql", f"SELECT label FROM read_parquet('s3://{other}/x.parquet')", "-w", folder, "--allow-files"
    )
    assert "outside" in allowed.stdout
    still = cli("sql", "DELETE FROM rows", "-w", folder, "--allow-files", ok=False)
    assert still.returncode == 1 and S3Server.SECRET not in still.stdout + still.stderr


def test_sigkill_mid_import_then_rerun_on_postgres_and_s3(remote_store, tmp_path):
    total = 60_000
    data = write_alpaca_jsonl(tmp_path / "big.jsonl", total, seed=7)
    folder = tmp_path / "wh"
    remote_store.init(folder).close()
    command = import_command(data, folder, "--batch-rows", "5000")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = folder / ".staging"
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
    with factory.open(folder, read_only=True) as wh:
        assert wh.count() == 0 and wh.jobs()["status"].to_list() == ["running"]
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{total:,} new row(s)" in rerun.stdout
    with factory.open(folder, read_only=True) as wh:
        assert wh.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM rows").row(0) == (total, total)
        assert sorted(wh.jobs()["status"].to_list()) == ["interrupted", "succeeded"]
    assert list(staging.iterdir()) == [] and not local_data_files(folder)


ROUNDS = 3


def test_two_machines_share_one_catalog_and_bucket(remote_store, tmp_path):
    """Two folders, each with its own factory.json, on one catalog database and one bucket prefix:
    both import their own files and the same files at the same instant, and filter, at once."""
    store = remote_store
    machines = [tmp_path / "m1" / "wh", tmp_path / "m2" / "wh"]
    for folder in machines:  # the second init finds the warehouse made by the first
        cli("init", "-w", str(folder), "--catalog", store.catalog, "--data-path", store.data_path)
    own = {m: [write_alpaca_jsonl(tmp_path / f"{m.parent.name}-{k}.jsonl", 1500, seed=k, prefix=f"{m.parent.name}{k}")
               for k in range(2)] for m in machines}  # fmt: skip
    # Each machine imports its own files while the other imports its own: nothing lost.
    writers = [
        subprocess.Popen(
            ["bash", "-ec", "; ".join(" ".join(import_command(f, m)) for f in own[m])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in machines
    ]
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        assert out.count("1,500 new row(s)") == 2, out
    # The same rows from both machines at the same instant (released by one barrier file), then
    # the same filter: each row stored once, judged once.
    race_dir = tmp_path / "race"
    races = [Race(race_dir, racers=1, rounds=ROUNDS + 1, env={"FACTORY_WAREHOUSE": str(m)}) for m in machines]
    try:
        for k in range(ROUNDS):
            same = write_jsonl(tmp_path / f"same{k}.jsonl", rows(2000, f"same{k}"))
            args = ["import", str(same), "--no-progress"]
            results = [result for race in races for result in race.round(k, args)]
            assert [r["code"] for r in results] == [0, 0], results
            assert sorted(r["out"].count("2,000 new row(s)") for r in results) == [0, 1], results
        results = [result for race in races for result in race.round(ROUNDS, ["filter", "exact"])]
        assert [r["code"] for r in results] == [0, 0], results
    finally:
        for race in races:
            race.close()
    expected = 2 * 2 * 1500 + ROUNDS * 2000
    for folder in machines:
        with factory.open(folder, read_only=True) as wh:
            assert wh.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM rows").row(0) == (
                expected,
                expected,
            )
            verdicts = wh.sql(
                "SELECT count(*) AS n, count(DISTINCT id) AS d FROM verdicts WHERE filter = 'exact'"
            )
            assert verdicts.row(0) == (expected, expected)
            assert set(wh.jobs()["status"]) == {"succeeded"}
    keys = store.keys()
    assert sum(k.startswith(f"{store.prefix}main/rows/") for k in keys) >= 4 + 1, keys
    assert not local_data_files(*(m.parent for m in machines))


ADDER = r"""
import os, sys, time
import polars as pl
import factory
from factory.runners.generation import make_row
path, tag, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
wh = factory.open(path)
for k in range(rounds):
    rows = [make_row("distill", "hf:tiny", f"{tag} round {k} question {i}", output="a") for i in range(2000)]
    frame = pl.DataFrame(rows, schema_overrides={"parent_ids": pl.List(pl.String), "tags": pl.List(pl.String)})
    print("ready", flush=True)
    while not os.path.exists(os.path.join(os.path.dirname(path), f"go-{k}")):
        time.sleep(0.001)
    print(wh.add_rows([frame], f"race {k}").inserted, flush=True)
"""


def test_identical_rows_added_at_once_by_two_processes_are_stored_once(remote_store, tmp_path):
    """Without a job (whose bookkeeping would conflict anyway), two appends of the same rows both
    committed on PostgreSQL (measured: 24,000 rows, 12,000 distinct over 6 rounds); the rows
    commit is exclusive, so the second retries, sees the first's rows and skips them."""
    folder = tmp_path / "wh"
    remote_store.init(folder).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ADDER, str(folder), "same", str(ROUNDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for k in range(ROUNDS):
            for proc in procs:
                assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            (tmp_path / f"go-{k}").touch()
            inserted = sorted(int(proc.stdout.readline()) for proc in procs)
            assert inserted == [0, 2000], inserted
        for proc in procs:
            assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        for proc in procs:
            if proc.poll() is None:  # a failed round left it waiting for its start file
                proc.kill()
                proc.wait()
    with factory.open(folder, read_only=True) as wh:
        counts = wh.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM rows").row(0)
        assert counts == (ROUNDS * 2000, ROUNDS * 2000)


def test_a_second_machine_must_join_with_the_catalogs_data_path(tmp_path, remote_store):
    first = remote_store.init(tmp_path / "m1")
    first.close()
    for wrong in ("s3://no-such-bucket/lake/", f"s3://{remote_store.bucket}/elsewhere/"):
        with pytest.raises(WarehouseError, match=f"files are in {remote_store.data_path}") as refused:
            factory.init(tmp_path / "m2", catalog=remote_store.catalog, data_path=wrong)
        assert f"--data-path {remote_store.data_path}" in str(refused.value)
        assert not (tmp_path / "m2" / "factory.json").exists()
    assert (
        factory.init(tmp_path / "m2", catalog=remote_store.catalog, data_path=remote_store.data_path).count()
        == 0
    )
