"""The driver commits a Ray job's verdicts only if they are one per candidate it handed out.

The workers' files are in a folder any node can write: verdicts for ids the driver did not hand
out (a bug in a plugin, or a file changed in the bucket) must not land, even when the counts agree.
"""

from __future__ import annotations

import polars as pl
import pytest

import factory
from factory.plugins import PluginError
from factory.runners import distributed


def _files(tmp_path, verdict_ids: list[str]) -> tuple[str, str]:
    contenders = tmp_path / "contenders"
    verdicts = tmp_path / "verdicts"
    contenders.mkdir()
    verdicts.mkdir()
    pl.DataFrame({"id": ["p1", "c1", "c2", "c3"], "_rank": [0, 1, 1, 1]}).write_parquet(
        contenders / "0.parquet"
    )
    half = len(verdict_ids) // 2
    for k, ids in enumerate((verdict_ids[:half], verdict_ids[half:])):  # two workers' files
        pl.DataFrame(
            {
                "id": ids,
                "keep": [True] * len(ids),
                "score": [None] * len(ids),
                "reason": ["unique"] * len(ids),
            },
            schema={"id": pl.String, "keep": pl.Boolean, "score": pl.Float64, "reason": pl.String},
        ).write_parquet(verdicts / f"{k}.parquet")
    return str(verdicts / "*.parquet"), str(contenders / "*.parquet")


def test_verdicts_for_the_candidates_pass(tmp_path):
    wh = factory.init(tmp_path / "wh")
    glob, contenders = _files(tmp_path, ["c1", "c2", "c3"])
    distributed.check(wh, glob, 3, "exact", contenders)


@pytest.mark.parametrize(
    ("ids", "says"),
    [
        (["c1", "c2", "stranger"], "rows it was not given to judge (stranger)"),  # counts agree
        (["c1", "c2", "p1"], "rows it was not given to judge (p1)"),  # the kept pool is not judged
        (["c1", "c2", "c2"], "3 verdicts for 2 rows"),
        (["c1", "c2"], "2 verdicts for 2 rows, not one per candidate (3)"),
    ],
)
def test_verdicts_for_other_rows_are_refused(tmp_path, ids, says):
    wh = factory.init(tmp_path / "wh")
    glob, contenders = _files(tmp_path, ids)
    with pytest.raises(PluginError, match=says.replace("(", r"\(").replace(")", r"\)")):
        distributed.check(wh, glob, 3, "exact", contenders)
