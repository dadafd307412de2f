"""Snapshots: verdicts honoured, immutability, parents and where, digest, show, diff, SQL access."""

from __future__ import annotations

import polars as pl
import pytest

import factory
from factory.store import lake, schema
from factory.store.snapshots import SnapshotError
from factory.store.warehouse import WarehouseError
from tests.conftest import alpaca, write_jsonl


@pytest.fixture
def loaded(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(20))), source="seeds")
    factory.import_file(
        wh, str(write_jsonl(tmp_path / "b.jsonl", alpaca(10, prefix="extra"))), source="extra"
    )
    return wh


def test_default_snapshot_leaves_out_rows_a_filter_rejected(loaded):
    wh = loaded
    ids = wh.sql("SELECT id FROM rows ORDER BY id")["id"]
    wh.add_verdicts(pl.DataFrame({"id": ids[:3], "keep": [False] * 3, "reason": ["too_short"] * 3}), "length")
    wh.add_verdicts(
        pl.DataFrame(
            {"id": ids[3:5], "keep": [False, False], "score": [0.9, 0.8], "reason": ["near_duplicate"] * 2}
        ),
        "minhash",
    )
    # A later run of the same filter changes its mind on one row: the latest verdict wins.
    wh.add_verdicts(pl.DataFrame({"id": ids[:1], "keep": [True]}), "length")
    record = wh.create_snapshot("base", message="first cut")
    assert record["row_count"] == 30 - 4
    members = set(wh.snapshot("base")["id"])
    assert ids[0] in members and not members & set(ids[1:5])
    assert len(record["filter_runs"]) == 3
    everything = wh.create_snapshot("all", honour_verdicts=False)
    assert everything["row_count"] == 30
    why = wh.why(ids[1][:10])
    assert why.height == 1 and why["reason"][0] == "too_short" and not why["keep"][0]


def test_names_are_never_reused_and_must_be_valid(loaded):
    loaded.create_snapshot("base")
    with pytest.raises(SnapshotError, match="snapshot 'base' already exists; snapshots are immutable"):
        loaded.create_snapshot("base")
    with pytest.raises(SnapshotError, match="is not allowed"):
        loaded.create_snapshot("bad name;")
    with pytest.raises(SnapshotError, match="no snapshot named 'nope' \\(known snapshots: base\\)"):
        loaded.create_snapshot("child", parent="nope")


def test_from_parent_with_where_and_sql_access(loaded):
    wh = loaded
    wh.create_snapshot("base")
    child = wh.create_snapshot(
        "seeds_only", parent="base", where="source = 'seeds' AND input <> ''", message="seed rows with input"
    )
    assert child["row_count"] == 10 and child["parent"] == "base"
    frame = wh.sql("SELECT source, count(*) AS n FROM snapshot('seeds_only') GROUP BY ALL")
    assert frame.to_dicts() == [{"source": "seeds", "n": 10}]
    # Rows added later do not enter an existing snapshot.
    factory.import_file(wh, str(write_jsonl(wh.folder.parent / "c.jsonl", alpaca(5, prefix="late"))))
    assert wh.sql("SELECT count(*) AS n FROM snapshot('base')")["n"][0] == 30
    with pytest.raises(SnapshotError, match="--where 'no_such_column > 1'"):
        wh.create_snapshot("broken", where="no_such_column > 1")
    with pytest.raises(SnapshotError, match="must be one SQL condition"):
        wh.create_snapshot("sneaky", where="true); DROP TABLE rows; SELECT (1")
    assert wh.count() == 35


def test_digest_depends_on_members_only(loaded, tmp_path):
    a = loaded.create_snapshot("a")
    b = loaded.create_snapshot("b")
    assert a["digest"] == b["digest"]
    c = loaded.create_snapshot("c", where="source = 'seeds'")
    assert c["digest"] != a["digest"]
    other = factory.init(tmp_path / "other")
    factory.import_file(other, str(tmp_path / "b.jsonl"))
    factory.import_file(other, str(tmp_path / "a.jsonl"))
    assert other.create_snapshot("same")["digest"] == a["digest"]  # same rows, other order and warehouse


def test_show_and_diff(loaded, tmp_path):
    wh = loaded
    wh.create_snapshot("base")
    wh.create_snapshot("short", parent="base", where="source = 'seeds'")
    factory.import_file(wh, str(write_jsonl(tmp_path / "n.jsonl", alpaca(2, prefix="new"))))
    wh.create_snapshot("grown")
    info = wh.show_snapshot("short")
    assert info["snapshot"]["row_count"] == 20
    assert info["counts"]["source"].to_dicts() == [{"value": "seeds", "rows": 20}]
    lengths = info["lengths_chars"].filter(pl.col("field") == "output").row(0, named=True)
    assert lengths["min"] == len("The number is 0.") and lengths["max"] == len("The number is 19.")
    d = wh.diff("base", "short", sample=3)
    assert d["added"]["count"] == 0 and d["removed"]["count"] == 10 and d["removed"]["sample"].height == 3
    assert set(d["removed"]["sample"]["source"]) == {"extra"}
    d2 = wh.diff("short", "grown")
    assert d2["added"]["count"] == 12 and d2["removed"]["count"] == 0
    listing = wh.snapshots()
    assert listing["name"].to_list() == ["base", "short", "grown"]


def test_time_travel_reads_an_earlier_state(loaded, tmp_path):
    wh = loaded
    version = wh.lake.version()
    factory.import_file(wh, str(write_jsonl(tmp_path / "n.jsonl", alpaca(3, prefix="new"))))
    assert wh.sql("SELECT count(*) AS n FROM rows AT (VERSION => ?)", [version])["n"][0] == 30
    assert wh.count() == 33
    log = wh.history()
    assert log["message"].str.starts_with("import:").sum() == 3
    assert set(log["author"].drop_nulls()) == {lake.default_author()}


def test_fast_and_general_snapshot_reads_agree(loaded, tmp_path):
    wh = loaded
    ids = wh.sql("SELECT id FROM rows ORDER BY id")["id"]
    wh.create_snapshot("everything")
    wh.add_verdicts(pl.DataFrame({"id": ids[:2], "keep": [False, False]}), "length")
    wh.create_snapshot("kept")
    factory.import_file(wh, str(write_jsonl(tmp_path / "n.jsonl", alpaca(4, prefix="later"))))
    wh.create_snapshot("kept_seeds", parent="kept", where="source = 'seeds'")
    wh.create_snapshot("lucky", parent="kept", where="random() < 2")  # volatile: read through its members
    replayable = dict(wh.sql("SELECT name, query IS NOT NULL FROM snapshots").rows())
    assert replayable == {"everything": True, "kept": True, "kept_seeds": True, "lucky": False}
    seeds_kept = wh.sql("SELECT count(*) AS n FROM snapshot('kept') WHERE source = 'seeds'")["n"][0]
    for name, size in (("everything", 30), ("kept", 28), ("kept_seeds", seeds_kept), ("lucky", 28)):
        fast = wh.sql(f"SELECT id FROM snapshot('{name}') ORDER BY id")["id"].to_list()
        general = wh.sql("SELECT id FROM snapshot(?) ORDER BY id", [name])["id"].to_list()
        members = wh.sql("SELECT id FROM snapshot_rows WHERE snapshot = ? ORDER BY id", [name])[
            "id"
        ].to_list()
        assert fast == general == members and len(fast) == size
    with pytest.raises(SnapshotError, match="no snapshot named 'missing'"):
        wh.sql("SELECT * FROM snapshot('missing')")


def test_schema_version_checked_on_open(wh):
    wh.lake.write(
        "test: bump schema",
        lambda lk: lk.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'"),
    )
    folder = wh.folder
    wh.close()
    with pytest.raises(
        WarehouseError, match=f"schema version 999, this instruction-factory expects {schema.SCHEMA_VERSION}"
    ):
        factory.open(str(folder))


def test_a_schema_2_warehouse_gains_the_new_tables_on_open(wh):
    def downgrade(lk) -> None:
        lk.execute("DROP TABLE embeddings")
        lk.execute("DROP TABLE sketches")
        lk.execute("DROP TABLE mcts_nodes")
        lk.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")

    wh.lake.write("test: a schema 2 warehouse", downgrade)
    folder = wh.folder
    wh.close()
    reader = factory.open(str(folder), read_only=True)  # readers open it as it is
    assert reader.count("rows") == 0
    reader.close()
    upgraded = factory.open(str(folder))
    assert upgraded.count("sketches") == 0 and upgraded.count("embeddings") == 0
    assert upgraded.count("mcts_nodes") == 0
    assert upgraded.sql("SELECT value FROM meta WHERE key = 'schema_version'")["value"][0] == str(
        schema.SCHEMA_VERSION
    )
    assert "lock_key" in upgraded.sql("DESCRIBE jobs")["column_name"].to_list()
    upgraded.close()


def test_a_schema_4_warehouse_gains_the_jobs_lock_key_on_open(wh):
    def downgrade(lk) -> None:
        lk.execute("ALTER TABLE jobs DROP COLUMN lock_key")
        lk.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")

    factory.import_file(wh, str(write_jsonl(wh.folder.parent / "a.jsonl", alpaca(3))))
    wh.lake.write("test: a schema 4 warehouse", downgrade)
    folder = wh.folder
    wh.close()
    with factory.open(str(folder), read_only=True) as reader:  # readers open it as it is
        assert reader.jobs().height == 1 and "lock_key" not in reader.jobs().columns
    with factory.open(str(folder)) as upgraded:
        jobs = upgraded.jobs()
        assert jobs.height == 1 and jobs["lock_key"].to_list() == [None]
        assert upgraded.sql("SELECT value FROM meta WHERE key = 'schema_version'").item() == str(
            schema.SCHEMA_VERSION
        )


def test_a_schema_5_warehouse_gains_meta_and_split_origins_and_imports_into_them(wh, tmp_path):
    def downgrade(lk) -> None:
        for column in ("meta", "origin_file", "origin_line"):
            lk.execute(f"ALTER TABLE rows DROP COLUMN {column}")
        lk.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")

    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(3))))
    wh.lake.write("test: a schema 5 warehouse", downgrade)
    folder = wh.folder
    wh.close()
    with factory.open(str(folder), read_only=True) as reader:
        assert "meta" not in reader.sql("SELECT * FROM rows").columns
    with factory.open(str(folder)) as upgraded:
        assert upgraded.sql("SELECT value FROM meta WHERE key = 'schema_version'").item() == str(
            schema.SCHEMA_VERSION
        )
        records = [{**r, "category": "x"} for r in alpaca(3, prefix="new")]
        factory.import_file(upgraded, str(write_jsonl(tmp_path / "b.jsonl", records)))
        rows = upgraded.sql("SELECT meta->>'category' AS c, origin_line FROM rows ORDER BY rowid")
        assert rows.rows() == [(None, None)] * 3 + [("x", 1), ("x", 2), ("x", 3)]


def test_a_schema_6_warehouse_gains_the_recipe_tables_and_columns_on_open(wh, tmp_path):
    def downgrade(lk) -> None:
        lk.execute("DROP TABLE recipes")
        lk.execute("DROP TABLE recipe_steps")
        for table in ("jobs", "snapshots", "runs"):
            lk.execute(f"ALTER TABLE {table} DROP COLUMN recipe_step")
        lk.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")

    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(3))))
    wh.create_snapshot("old")
    wh.lake.write("test: a schema 6 warehouse", downgrade)
    folder = wh.folder
    wh.close()
    with factory.open(str(folder), read_only=True) as reader:  # readers open it as it is
        assert reader.show_snapshot("old")["recipe"] is None
    with factory.open(str(folder)) as upgraded:
        assert upgraded.sql("SELECT value FROM meta WHERE key = 'schema_version'").item() == "7"
        assert upgraded.count("recipes") == 0 and upgraded.count("recipe_steps") == 0
        assert upgraded.jobs()["recipe_step"].to_list() == [None]
        assert upgraded.show_snapshot("old")["recipe"] is None
        upgraded.create_snapshot("new")  # the snapshots insert fits the migrated column order
        assert upgraded.snapshots().height == 2


def test_missing_warehouse_says_how_to_create_one(tmp_path):
    with pytest.raises(WarehouseError, match="factory init --warehouse"):
        factory.open(str(tmp_path / "none"))


def test_catalog_and_data_path_are_configuration(tmp_path):
    catalog = tmp_path / "catalogs" / "factory.sqlite"
    catalog.parent.mkdir()
    data = tmp_path / "lake-files"
    wh = factory.init(tmp_path / "wh", catalog=f"sqlite:{catalog}", data_path=str(data))
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(3))))
    wh.close()
    assert catalog.exists() and not (tmp_path / "wh" / "catalog.sqlite").exists()
    assert list(data.rglob("*.parquet")) or catalog.stat().st_size > 0  # small inserts may be inlined
    reopened = factory.open(str(tmp_path / "wh"), read_only=True)
    assert reopened.count() == 3 and reopened.lake.location.catalog == f"sqlite:{catalog}"
    reopened.close()
    # Moving the default layout keeps working: relative paths resolve against the folder.
    default = factory.init(tmp_path / "a" / "wh")
    factory.import_file(default, str(tmp_path / "a.jsonl"))
    default.close()
    (tmp_path / "a").rename(tmp_path / "b")
    moved = factory.open(str(tmp_path / "b" / "wh"))
    assert moved.count() == 3
