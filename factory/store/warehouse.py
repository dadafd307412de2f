"""The warehouse: the Python API every command, plugin and notebook uses.

`factory.init(path)` creates one, `factory.open(path)` opens it; the returned
`Warehouse` has a handful of verbs (`sql`, `add_rows`, `add_verdicts`, the
snapshot verbs) that take and return polars frames. Only the store's modules touch
DuckDB (`lake.py` its connection, `sql_guard.py` its parser); this module decides
what SQL to run.

A warehouse folder holds `factory.json` (where the catalog and the data files
are) and, by default, `catalog.sqlite` and `data/` beside it. The catalog URL and
data path can point elsewhere (a PostgreSQL catalog, an object-store bucket):
see the README's "Warehouse layout".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from factory import errors
from factory.store import crash, lake, outputs, schema, snapshots, sql_guard

SNAPSHOT_CALL = re.compile(r"\bsnapshot\(\s*'([A-Za-z0-9][A-Za-z0-9_.\-]*)'\s*\)", re.IGNORECASE)
CONFIG_FILE = "factory.json"
STAGING = ".staging"
ENV_WAREHOUSE = "FACTORY_WAREHOUSE"
DEFAULT_PATH = "warehouse"


class WarehouseError(lake.LakeError):
    """A problem with the warehouse itself (missing, wrong version, bad config)."""


class EnvironmentSettingError(WarehouseError):
    """A warehouse setting from the environment ($FACTORY_CATALOG) is refused, not the config file."""


def resolve_path(path: str | os.PathLike | None) -> Path:
    """The warehouse folder: the argument, else $FACTORY_WAREHOUSE, else ./warehouse."""
    return Path(path or os.environ.get(ENV_WAREHOUSE) or DEFAULT_PATH)


CATALOG_FORMS = "sqlite:PATH, postgres:dbname=... host=..., or duckdb:PATH"


def _location(folder: Path, config: dict[str, str]) -> lake.Location:
    catalog = os.environ.get("FACTORY_CATALOG") or config["catalog"]
    data_path = os.environ.get("FACTORY_DATA_PATH") or config["data_path"]
    if not isinstance(catalog, str) or not isinstance(data_path, str):
        raise WarehouseError("catalog and data_path must be text")
    try:
        lake.refuse_stored_password(catalog)  # before the catalog string is shown anywhere
    except lake.LakeError as exc:
        if os.environ.get("FACTORY_CATALOG"):  # the environment's catalog, not the config file's
            raise EnvironmentSettingError(f"$FACTORY_CATALOG: {exc}") from None
        raise WarehouseError(str(exc)) from None
    scheme, _, target = catalog.partition(":")
    if scheme not in lake.CATALOG_SCHEMES or not target:
        raise WarehouseError(f"catalog '{catalog}' is not one of {CATALOG_FORMS}")
    if scheme in ("sqlite", "duckdb") and not os.path.isabs(target):
        catalog = f"{scheme}:{(folder / target).resolve()}"
    if "://" not in data_path and not os.path.isabs(data_path):
        data_path = str((folder / data_path).resolve()) + os.sep
    return lake.Location(catalog=catalog, data_path=data_path)


def init(
    path: str | os.PathLike | None = None,
    catalog: str | None = None,
    data_path: str | None = None,
) -> Warehouse:
    """Create a warehouse (or open it if it already exists) and return it.

    catalog: DuckLake catalog URL; default `sqlite:catalog.sqlite` inside the folder.
    data_path: where Parquet data files go; default `data/` inside the folder.
    """
    folder = resolve_path(path)
    config_path = folder / CONFIG_FILE
    if config_path.exists():
        return open_warehouse(folder)
    if folder.exists() and not folder.is_dir():
        raise WarehouseError(f"{folder} is a file, not a folder: give --warehouse a folder to create")
    config = {"catalog": catalog or "sqlite:catalog.sqlite", "data_path": data_path or "data/"}
    try:
        location = _location(folder, config)
    except WarehouseError as exc:
        raise WarehouseError(f"--catalog: {exc}") from exc
    folder.mkdir(parents=True, exist_ok=True)
    if "://" not in location.data_path:
        Path(location.data_path).mkdir(parents=True, exist_ok=True)
    conn = lake.connect(location)
    stored = conn.stored_data_path()
    if stored is not None and stored.rstrip("/\\") != location.data_path.rstrip("/\\"):
        conn.close()
        raise WarehouseError(
            f"the catalog already holds a warehouse whose files are in {stored}, not {location.data_path}: "
            f"join it with --data-path {stored}, or give a new database for a new warehouse"
        )

    def create(lk: lake.Lake) -> None:
        for table in schema.TABLES:
            lk.execute(schema.create_sql(table))
        if lk.scalar("SELECT count(*) FROM meta WHERE key = 'schema_version'") == 0:
            lk.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(schema.SCHEMA_VERSION)])

    conn.write("init: create warehouse tables", create)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return Warehouse(folder, conn)


def open_warehouse(
    path: str | os.PathLike | None = None,
    read_only: bool = False,
    sandbox: bool = False,
    allow_files: bool = False,
) -> Warehouse:
    """Open an existing warehouse; fails with a hint when it is missing or of another schema version.

    sandbox: open it to run a user's SQL (`factory sql`): read-only, every query checked to be
    one SELECT that only reads, DuckDB's file access confined to the data path (unless
    `allow_files`) and its configuration locked (see `lake.Lake.lock_down`).
    """
    read_only = read_only or sandbox
    folder = resolve_path(path)
    config_path = folder / CONFIG_FILE
    if folder.exists() and not folder.is_dir():
        raise WarehouseError(f"{folder} is a file, not a warehouse folder: give --warehouse the folder")
    if not config_path.exists():
        raise WarehouseError(
            f"no warehouse at {folder} (missing {CONFIG_FILE}); create one with `factory init --warehouse {folder}`"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise WarehouseError(
                f"expected an object with catalog and data_path, got {type(config).__name__}"
            )
        location = _location(folder, config)
    except EnvironmentSettingError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, WarehouseError) as exc:
        raise WarehouseError(f"{config_path}: not a valid warehouse config ({exc})") from exc
    conn = lake.connect(location, read_only=read_only)
    version = conn.scalar("SELECT value FROM meta WHERE key = 'schema_version'")
    if version in schema.ADDITIVE_FROM:  # only tables and columns were added since (readers skip it)
        if not read_only:
            conn.write(f"migrate: schema {version} -> {schema.SCHEMA_VERSION}", _migrate(version))
        version = str(schema.SCHEMA_VERSION)
    if version != str(schema.SCHEMA_VERSION):
        conn.close()
        raise WarehouseError(
            f"{folder}: warehouse schema version {version}, this instruction-factory expects "
            f"{schema.SCHEMA_VERSION}; use a matching release of instruction-factory"
        )
    wh = Warehouse(folder, conn)
    if sandbox:
        conn.lock_down(allow_files)
    return wh


def _migrate(version: str) -> Callable[[lake.Lake], None]:
    def work(lk: lake.Lake) -> None:
        for statement in schema.migration_sql(version):
            lk.execute(statement)
        lk.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(schema.SCHEMA_VERSION)])

    return work


@dataclass
class InsertResult:
    """What `add_rows` did: rows offered, and rows new to the warehouse."""

    offered: int = 0
    inserted: int = 0
    repeated: int = 0  # copies of a row given earlier in the same input
    known: int = 0  # distinct rows the warehouse had before


_POLARS_TYPES = {
    "VARCHAR": pl.String,
    "VARCHAR[]": pl.List(pl.String),
    schema.MESSAGE_TYPE: schema.MESSAGE_DTYPE,
    "TIMESTAMPTZ": pl.Datetime("us", "UTC"),
    "BIGINT": pl.Int64,
}
_SET_BY_GENERATORS = [name for name in schema.ROWS if name not in ("id", "job_id", "created_at")]


def _staging_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """A batch with exactly the rows columns a generator may set, in their types (missing ones NULL)."""
    return frame.select(
        (pl.col(name) if name in frame.columns else pl.lit(None))
        .cast(_POLARS_TYPES[schema.ROWS[name]])
        .alias(name)
        for name in _SET_BY_GENERATORS
    )


def _stored_rows(frame: pl.DataFrame, job_id: str | None, created_at: datetime) -> pl.DataFrame:
    """A batch as the rows table stores it: every column, in table order, with its id."""
    staged = _staging_frame(frame)
    return staged.with_columns(
        schema.row_ids(staged),
        pl.lit(job_id, pl.String).alias("job_id"),
        pl.lit(created_at, _POLARS_TYPES["TIMESTAMPTZ"]).alias("created_at"),
    ).select(list(schema.ROWS))


def ids_of(rows: pl.DataFrame) -> pl.Series:
    """The ids a frame of rows gets when stored (for verdicts written in the same commit)."""
    return schema.row_ids(_staging_frame(rows))


# Staged files become the rows table's data files as they are. zstd at level 1 costs less CPU
# than snappy (the former choice) and makes files about 40% smaller (234 vs 402 MB a million
# short rows of the realistic bench corpus). Columns of long or one-off text are written
# without a dictionary (it never fits, and trying costs) and without min/max statistics
# (DuckLake then records their null counts as unknown, which it handles; nothing prunes
# files on a passage's min and max): pyarrow so writes the rows table's files with 0.8
# CPU-seconds a million rows less than polars' writer, measured on the same corpus.
STAGED_COMPRESSION = {"compression": "zstd", "compression_level": 1}
_LONG_TEXT = {"system", "instruction", "input", "output", "messages", "rejected", "meta", "origin"}
_NO_DICTIONARY = _LONG_TEXT - {"system"} | {"id"}  # system is mostly one value: a dictionary fits it
_NO_STATISTICS = _LONG_TEXT | {"generator_params"}


def write_staged(frame: pl.DataFrame, path: Path) -> None:
    """Write a batch of stored rows as a Parquet file the rows table can take as a data file."""
    table = frame.to_arrow()
    names = table.column_names
    pq.write_table(
        table,
        path,
        **STAGED_COMPRESSION,
        use_dictionary=[c for c in names if c not in _NO_DICTIONARY],
        write_statistics=[c for c in names if c not in _NO_STATISTICS],
    )


class _FirstCopies:
    """Which rows of each batch are the first copy of their id in this input.

    The ids seen so far are kept in a set (about 120 bytes an id). Past `limit` ids it
    stops tracking and lets every row through: the commit then finds the copies in SQL
    (slower, but memory stays bounded on any input).
    """

    def __init__(self, limit: int = 5_000_000) -> None:
        self.seen: set[str] = set()
        self.limit = limit
        self.tracking = True

    def mask(self, ids: pl.Series) -> pl.Series | None:
        """A keep mask for the batch's ids, or None when every row is kept."""
        if not self.tracking or len(self.seen) + len(ids) > self.limit:
            self.tracking = False
            self.seen.clear()
            return None
        values = ids.to_list()
        keep = ids.is_first_distinct()
        again = self.seen.intersection(values)  # set operations loop in C
        if again:
            keep = keep & ~ids.is_in(list(again))
        self.seen.update(values)
        return None if keep.all() else keep


class _Stager:
    """Writes staged Parquet files on a background thread, one file behind the producer.

    pyarrow releases the GIL while it encodes and compresses, so the next batch is read,
    normalised and hashed while this one is written. A write's error (a full disk) is
    raised by the next `write` or on leaving the block.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.pending: Future | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="factory-stage")

    def __enter__(self) -> _Stager:
        return self

    def write(self, frame: pl.DataFrame, path: Path) -> None:
        self._wait()
        self.pending = self.pool.submit(write_staged, frame, path)

    def _wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            with lake.disk_full_says_so(self.where):
                pending.result()

    def __exit__(self, kind: object, *exc: object) -> None:
        try:
            if kind is None:
                self._wait()
            elif self.pending is not None:
                self.pending.cancel()
                with contextlib.suppress(Exception):
                    self.pending.result()
        finally:
            self.pool.shutdown(wait=True)


class Warehouse:
    """An open warehouse. Verbs return polars frames; writes are single DuckLake commits."""

    def __init__(self, folder: Path, conn: lake.Lake) -> None:
        self.folder = folder
        self.lake = conn
        self._relations: dict[str, str] = {}  # snapshot name -> SQL; snapshots never change
        self._views: dict[str, int] = {}  # temp view -> lake.rollbacks when it was made
        conn.execute(
            "CREATE OR REPLACE TEMP MACRO snapshot(snapshot_name) AS TABLE "
            "SELECT r.* FROM lake.rows r WHERE r.rowid IN "
            "(SELECT s.row FROM lake.snapshot_rows s WHERE s.snapshot = snapshot_name)"
        )

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Warehouse({str(self.folder)!r}, catalog={self.lake.location.catalog!r})"

    def close(self) -> None:
        self.lake.close()

    def protected_paths(self) -> list[Path]:
        """Where no command may write a user-named output (see `factory.store.outputs`)."""
        return outputs.protected(self.folder, self.lake.location)

    # -- reading -------------------------------------------------------------------------------
    def sql(self, query: str, params: lake.Params = None) -> pl.DataFrame:
        """Run SQL over the warehouse; `snapshot('name')` reads a snapshot's rows.

        A literal `snapshot('name')` is replaced by a temporary view of the snapshot's
        fastest form (its recorded query over time-travelled tables, else a rowid
        semi-join); the table macro `snapshot(name)` serves the parametrised form. Only a
        view's name goes into the text, never the recorded SQL itself: the replacement may
        land in a comment or a string, where spliced SQL would change what the query does.
        """
        expanded = self._expand(query)
        try:
            return self.lake.frame(expanded, params)
        except lake.SQLError as exc:
            if not any(view in str(exc) for view in self._views):
                raise
            self._views.clear()  # a view vanished (the query's own ROLLBACK?): make them again
            return self.lake.frame(self._expand(query), params)

    def user_sql(self, query: str) -> pl.DataFrame:
        """Run a query a user wrote (a prompt query) on this writable warehouse.

        Refused unless it is one SELECT that only reads the warehouse: no files, no table
        functions that write or reach outside (`sql_guard.check_query`)."""
        expanded = self._expand(query)
        sql_guard.check_query(expanded)
        return self.lake.frame(expanded)

    def user_expression(self, text: str) -> str:
        """A user's SQL condition or expression, checked to be one expression that reads only
        the warehouse and rewritten by DuckDB's parser, so it is safe to splice into SQL
        (`sql_guard.check_expression`). A snapshot it names must exist (an unknown one would
        read as empty and select nothing, silently)."""
        for name in SNAPSHOT_CALL.findall(text):
            snapshots.get(self, name)
        return sql_guard.check_expression(text)

    def expand(self, query: str) -> str:
        """The factory's own SQL with `snapshot('name')` replaced by its view, for a statement that
        does not go through `sql` (a COPY of the rows a job hands to Ray workers)."""
        return self._expand(query)

    def _expand(self, query: str) -> str:
        return SNAPSHOT_CALL.sub(lambda m: self._relation(m.group(1)), query)

    def _relation(self, name: str) -> str:
        if name not in self._relations:
            self._relations[name] = snapshots.relation(self, name)
        view = "snapshot_" + hashlib.md5(name.encode()).hexdigest()[:16]
        # Made once per connection (2 ms a query otherwise), again after a rolled-back write,
        # which drops the temp views created inside it.
        if self._views.get(view) != self.lake.rollbacks:
            self.lake.temp_view(view, self._relations[name])
            self._views[view] = self.lake.rollbacks
        return view

    def count(self, table: str = "rows") -> int:
        return int(self.lake.scalar(f"SELECT count(*) FROM {table}"))

    def history(self) -> pl.DataFrame:
        """Every commit to the warehouse: version, time, author, message (for time travel)."""
        return self.lake.history()

    # -- rows ----------------------------------------------------------------------------------
    def add_rows(
        self,
        batches: Iterable[pl.DataFrame],
        message: str,
        job_id: str | None = None,
        on_commit: Callable[[lake.Lake, InsertResult], None] | None = None,
    ) -> InsertResult:
        """Insert batches of normalised rows in one commit, skipping ids the warehouse already has.

        Each frame holds rows columns except `id`, `job_id` and `created_at`. Batches are
        checked, hashed and staged as local Parquet files first (written by a background
        thread while the next batch is prepared), so an error in any batch (raised by the
        `batches` iterator) commits nothing, memory stays bounded by the batch size and the
        ids seen so far (`_FirstCopies`), and a commit that meets a conflict is retried from
        the staged files without reading the input again. Within the input the first copy
        of a row wins: later copies are dropped before they are staged. When the warehouse
        holds none of the staged rows (a new import), the staged files become the table's
        data files as they are; otherwise DuckDB inserts the new ones.
        `on_commit` runs inside the same transaction (e.g. to mark the job done), so rows
        and bookkeeping land together.
        """
        staging = self.folder / STAGING / (job_id or new_id("stage"))
        staging.mkdir(parents=True, exist_ok=True)
        created_at = datetime.now(UTC)
        moved: list[Path] = []
        try:
            result = InsertResult()
            first_copies = _FirstCopies()

            dropped = 0  # later copies of a row, left out of the staged files
            with _Stager(str(staging.parent)) as stager:
                for k, frame in enumerate(batches):
                    if frame.height == 0:
                        continue
                    result.offered += frame.height
                    stored = _stored_rows(frame, job_id, created_at)
                    keep = first_copies.mask(stored["id"])
                    if keep is not None:
                        dropped += stored.height - int(keep.sum())
                        stored = stored.filter(keep)
                    if stored.height:
                        stager.write(stored, staging / f"{k:06d}.parquet")
            files = sorted(staging.glob("*.parquet"))
            crash.point("import.staged")
            target = self.lake.table_folder("rows")

            registered = [False]

            def commit(lk: lake.Lake) -> InsertResult:
                result.inserted, registered[0] = 0, False
                result.repeated, result.known = dropped, 0
                if files:
                    current = moved + files[len(moved) :]  # an earlier attempt may have moved some
                    source = _parquet(current)
                    # Copies the staging let through (past its memory bound) and rows the warehouse has.
                    total, distinct, known = lk.row(
                        f"SELECT count(*), count(DISTINCT id), (SELECT count(DISTINCT s.id) FROM {source} s "
                        f"SEMI JOIN rows r ON r.id = s.id) FROM {source}"
                    )
                    result.repeated += int(total) - int(distinct)
                    result.known = int(known)
                    if target is not None and total == distinct and not known:
                        # Only new rows, each once: the staged files become the table's data files.
                        for k, file in enumerate(files[len(moved) :], start=len(moved)):
                            moved.append(_move(file, target / f"import-{staging.name}-{k:06d}.parquet"))
                        for file in moved:
                            lk.execute("CALL ducklake_add_data_files('lake', 'rows', ?)", [str(file)])
                        result.inserted, registered[0] = int(total), True
                    else:
                        result.inserted = self._insert_new(lk, current)
                if on_commit is not None:
                    on_commit(lk, result)
                return result

            # On a catalog server (PostgreSQL) two appends of rows both saw as new both commit
            # (measured: 24,000 rows, 12,000 distinct, over 6 rounds of two processes): exclusive,
            # the second retries and skips them. A local catalog's writers take turns on its lock
            # file (`Lake._writer_lock`) already, and the guard would cost ~15 ms a commit there
            # (40 commits of 100 rows: 2.3-2.5 s instead of 1.7-1.9 s).
            exclusive = self.lake.location.scheme not in lake.LOCAL_CATALOGS
            outcome = self.lake.write(message, commit, exclusive=exclusive)
            if registered[0]:
                moved.clear()  # they are the table's data files now
            return outcome
        finally:
            for file in moved:  # moved for a commit that never happened
                file.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _insert_new(lk: lake.Lake, files: list[Path]) -> int:
        """Insert the staged rows the warehouse does not have yet, each id's first copy once."""
        # Rows land in input order (their rowid is the keep=first order of dedup): the window that
        # keeps each id's first copy and the anti join would otherwise shuffle them.
        source = (
            f"(SELECT * FROM {_parquet(files, ordered=True)} "
            "QUALIFY row_number() OVER (PARTITION BY id ORDER BY filename, file_row_number) = 1)"
        )
        columns = schema.column_list("rows")
        selected = ", ".join(f"b.{c}" for c in columns.split(", "))
        return int(
            lk.scalar(
                f"INSERT INTO rows ({columns}) SELECT {selected} FROM {source} b ANTI JOIN rows r ON r.id = b.id "
                "ORDER BY b.filename, b.file_row_number"
            )
            or 0
        )

    # -- verdicts ------------------------------------------------------------------------------
    def add_verdicts(
        self,
        verdicts: pl.DataFrame,
        filter_name: str,
        run_id: str | None = None,
        on_commit: Callable[[lake.Lake], None] | None = None,
    ) -> str:
        """Append one filter run's verdicts (columns id, keep, and optional score, reason).

        Returns the run id. Rows are never deleted: a snapshot made afterwards leaves out
        rows whose latest verdict from any filter is keep = false. `on_commit` runs in the
        same transaction (e.g. to mark the filter's job done).
        """
        run = run_id or new_id("run")
        frame = verdict_frame(verdicts)

        def work(lk: lake.Lake) -> None:
            self.insert_verdicts(lk, frame, filter_name, run)
            if on_commit is not None:
                on_commit(lk)

        self.lake.write(f"filter: {filter_name} run {run} ({frame.height} verdicts)", work)
        return run

    @staticmethod
    def insert_verdicts(
        lk: lake.Lake, frame: pl.DataFrame, filter_name: str, run: str, once: bool = False
    ) -> None:
        """Append verdicts inside a write; with `once`, skip rows this filter has judged already."""
        skip = " WHERE id NOT IN (SELECT id FROM verdicts WHERE filter = $filter)" if once else ""
        with lk.registered("staged_verdicts", frame):
            lk.execute(
                "INSERT INTO verdicts (id, filter, run_id, score, keep, reason, created_at) "
                f"SELECT id, $filter, $run, score, keep, reason, now() FROM staged_verdicts{skip}",
                {"filter": filter_name, "run": run},
            )

    def why(self, row_id: str) -> pl.DataFrame:
        """Every verdict on one row (by full id or unique prefix), newest first."""
        return self.sql(
            "SELECT id, filter, run_id, keep, score, reason, created_at FROM verdicts "
            "WHERE starts_with(id, ?) ORDER BY created_at DESC",
            [row_id],
        )

    # -- jobs (their lifecycle is factory.store.jobs) -------------------------------------------
    def jobs(self) -> pl.DataFrame:
        return self.sql("SELECT * FROM jobs ORDER BY started_at DESC")

    # -- snapshots (logic in store/snapshots.py) ------------------------------------------------
    def create_snapshot(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return snapshots.create(self, name, **kwargs)

    def snapshots(self) -> pl.DataFrame:
        return snapshots.list_snapshots(self)

    def snapshot(self, name: str) -> pl.DataFrame:
        """The rows of a snapshot."""
        return self.sql(f"SELECT * FROM {self.snapshot_sql(name)} ORDER BY id")

    def snapshot_sql(self, name: str) -> str:
        """`snapshot('NAME')` to put in SQL, for an existing snapshot only (`snapshots.table`)."""
        return snapshots.table(self, name)

    def show_snapshot(self, name: str) -> dict[str, Any]:
        return snapshots.show(self, name)

    def diff(self, a: str, b: str, sample: int = 5) -> dict[str, Any]:
        return snapshots.diff(self, a, b, sample=sample)


def verdict_frame(verdicts: pl.DataFrame) -> pl.DataFrame:
    """Verdicts (id, keep, and optional score, reason) in the table's types."""
    missing = {"id", "keep"} - set(verdicts.columns)
    if missing:
        raise errors.InputError(f"verdicts frame needs columns {sorted(missing)}")
    return verdicts.select(
        pl.col("id").cast(pl.String),
        pl.col("keep").cast(pl.Boolean),
        (pl.col("score") if "score" in verdicts.columns else pl.lit(None)).cast(pl.Float64).alias("score"),
        (pl.col("reason") if "reason" in verdicts.columns else pl.lit(None)).cast(pl.String).alias("reason"),
    )


def _parquet(files: list[Path], ordered: bool = False) -> str:
    """SQL reading staged Parquet files (with file name and row number to keep input order)."""
    listing = ", ".join(lake.quote(str(f)) for f in files)
    return f"read_parquet([{listing}]{', filename = true, file_row_number = true' if ordered else ''})"


def _move(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)
    return target


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
