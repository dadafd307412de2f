"""The import's staging (issue 14): later copies dropped before staging, the staged files
registered as they are, snapshot views made once per connection and again after a rollback."""

from __future__ import annotations

import polars as pl
import pytest

import factory
from factory.store import lake
from factory.store.warehouse import _FirstCopies
from generators.human import ImportConfig, import_file
from tests.conftest import alpaca, write_jsonl


def test_first_copies_across_batches_keep_the_first_and_count_the_rest():
    copies = _FirstCopies()
    assert copies.mask(pl.Series(["a", "b", "c"])) is None  # nothing seen twice: no mask
    keep = copies.mask(pl.Series(["b", "d", "d", "a", "e"]))
    assert keep is not None and keep.to_list() == [False, True, False, False, True]


def test_first_copies_stop_tracking_past_their_limit():
    copies = _FirstCopies(limit=3)
    assert copies.mask(pl.Series(["a", "b", "a"])).to_list() == [True, True, False]
    assert copies.mask(pl.Series(["a", "c"])) is None  # past the limit: the commit finds copies in SQL
    assert not copies.tracking and not copies.seen


@pytest.mark.parametrize("limit", [5_000_000, 3])
def test_copies_across_batches_land_once_in_input_order(wh, tmp_path, monkeypatch, limit):
    monkeypatch.setattr(_FirstCopies.__init__, "__defaults__", (limit,))
    records = alpaca(12)
    data = [*records[:5], records[1], *records[5:9], records[0], records[8], *records[9:], records[4]]
    path = write_jsonl(tmp_path / "copies.jsonl", data)
    summary = import_file(wh, path, ImportConfig(batch_rows=4))
    assert (summary.offered, summary.inserted, summary.repeated, summary.known) == (16, 12, 4, 0)
    stored = wh.sql("SELECT instruction, origin_line FROM rows ORDER BY rowid")
    assert stored["instruction"].to_list() == [r["instruction"] for r in records]
    assert stored["origin_line"].to_list() == [1, 2, 3, 4, 5, 7, 8, 9, 10, 13, 14, 15]
    again = import_file(wh, path, ImportConfig(batch_rows=4))
    assert (again.inserted, again.repeated, again.known) == (0, 4, 12)


def test_a_snapshot_view_made_inside_a_rolled_back_write_is_made_again(wh, tmp_path):
    factory.import_file(wh, write_jsonl(tmp_path / "a.jsonl", alpaca(6)))
    wh.create_snapshot("first")

    def fails(lk: lake.Lake) -> None:
        assert wh.sql("SELECT count(*) AS n FROM snapshot('first')")["n"][0] == 6
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        wh.lake.write("a write that fails", fails)
    assert wh.sql("SELECT count(*) AS n FROM snapshot('first')")["n"][0] == 6


def test_a_snapshot_view_dropped_behind_our_back_is_made_again(wh, tmp_path):
    factory.import_file(wh, write_jsonl(tmp_path / "a.jsonl", alpaca(6)))
    wh.create_snapshot("first")
    assert wh.sql("SELECT count(*) AS n FROM snapshot('first')")["n"][0] == 6
    for view in list(wh._views):
        wh.lake.execute(f'DROP VIEW "{view}"')
    assert wh.sql("SELECT count(*) AS n FROM snapshot('first')")["n"][0] == 6
