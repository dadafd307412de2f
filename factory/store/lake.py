"""The one module that talks to DuckDB and DuckLake.

DuckDB's Python API and DuckLake's SQL functions move between versions, so every
call to them lives here (duckdb is pinned in pyproject.toml). Everything else in
the project gets polars frames, Arrow tables or plain values back.

A `Lake` is one DuckDB connection with the warehouse's DuckLake catalog attached
as `lake` and made the default schema. Writes go through `Lake.write`, which runs
a function inside one DuckLake transaction carrying an author and a commit
message, and retries the whole function with back-off when another process got
there first (a commit conflict, or SQLite's "database is locked").

Credentials never pass through here as configuration: an S3 data path gets a DuckDB
TEMPORARY secret made from the AWS_* environment (`storage.s3_settings`), gone with the
connection; a PostgreSQL catalog string may not hold a password (libpq reads PGPASSWORD or
~/.pgpass). Every error text made here is scrubbed of them (`factory.errors.scrub`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import importlib.util
import os
import random
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import polars as pl
import pyarrow as pa

from factory import errors
from factory.errors import FactoryError
from factory.store import crash, storage
from factory.store.sql_guard import FileAccess, QueryRefused, check_query, check_remote_paths

T = TypeVar("T")
Params = list[Any] | dict[str, Any] | None
ALIAS = "lake"
MAX_DELAY = 2.0  # seconds: the longest back-off between two tries
GUARD_KEY = "schema_version"  # the meta row that exclusive writes rewrite (see Lake.write)

_RETRYABLE = re.compile(
    r"database is locked|database table is locked|conflict|SQLITE_BUSY|busy|could not serialize",
    re.IGNORECASE,
)

# Which DuckDB extension serves which catalog or storage scheme.
_CATALOG_EXTENSIONS = {"sqlite": "sqlite_scanner", "postgres": "postgres_scanner", "mysql": "mysql_scanner"}
CATALOG_SCHEMES = (*_CATALOG_EXTENSIONS, "duckdb")
LOCAL_CATALOGS = ("sqlite", "duckdb")  # a file, whose writers take turns on a lock file beside it
_STORAGE_EXTENSIONS = {"s3": "httpfs", "gs": "httpfs", "gcs": "httpfs", "http": "httpfs", "https": "httpfs"}
S3_SECRET = "factory_s3"  # the connection's TEMPORARY secret (never persisted)
S3_HINT = (
    "S3 credentials and endpoint come from the environment only: set AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys), AWS_REGION, and "
    "AWS_ENDPOINT_URL for a server other than AWS (e.g. http://127.0.0.1:9000)"
)
PG_HINT = (
    "PostgreSQL credentials come from the environment only: set PGPASSWORD or write ~/.pgpass "
    "(libpq reads both); the catalog string names the database, host, port and user"
)
_S3_TROUBLE = re.compile(
    r"HTTP (?:error|4\d\d|5\d\d|GET|HEAD|PUT|POST)|s3://|AccessDenied|InvalidAccessKeyId|"
    r"SignatureDoesNotMatch|NoSuchBucket|Could not establish connection|Unable to connect",
    re.IGNORECASE,
)
_PG_TROUBLE = re.compile(r"password authentication|no password supplied|authentication failed", re.IGNORECASE)
# A password in a libpq string: `password=...` (keyword form or URI query), or `user:pw@` in a URI.
_PASSWORD = re.compile(r"(?i)\bpassword\s*=|://[^/@\s]*:[^/@\s]*@")


class LakeError(FactoryError, RuntimeError):
    """A warehouse problem the user can act on; the message says what to do."""


class SQLError(LakeError):
    """A statement DuckDB refused (a syntax error, an unknown column, a conflict that did not clear)."""


Error = SQLError  # what callers catch around a query


class DiskFull(LakeError):
    """The disk filled up while writing; the write was rolled back whole."""


def clean(text: str, location: Location | None = None) -> str:
    """An error text fit to show: secrets scrubbed, and what to set when storage or the catalog
    refused the credentials (they come from the environment)."""
    text = errors.scrub(text) or text
    if location is not None:
        if storage.is_remote(location.data_path) and _S3_TROUBLE.search(text) and S3_HINT not in text:
            text = f"{text}\n{S3_HINT}"
        if location.scheme == "postgres" and _PG_TROUBLE.search(text) and PG_HINT not in text:
            text = f"{text}\n{PG_HINT}"
    return text


_SECRET_KEYS = {"password", "sslpassword"}  # libpq's connection parameters that hold a secret
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


def _catalog_keys(catalog: str) -> set[str]:
    """The connection parameters a catalog string sets, read as libpq reads them (keyword=value
    pairs, or a URI whose query keys are percent-decoded), lower-cased."""
    target = catalog.partition(":")[2].strip() if ":" in catalog else catalog
    if re.match(r"(?i)postgres(ql)?://", target):
        parts = urllib.parse.urlsplit(target)
        keys = {k.lower() for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}
        return keys | ({"password"} if parts.password is not None else set())
    return {m.group(1).lower() for m in _KEYWORD.finditer(target)}


def refuse_stored_password(catalog: str) -> None:
    """A catalog string may not carry a password: it would be stored in factory.json and printed."""
    if _PASSWORD.search(catalog) or _catalog_keys(catalog) & _SECRET_KEYS:
        raise LakeError(
            "the catalog string holds a password, and the factory never stores credentials (factory.json "
            "keeps the catalog string as given); remove it. " + PG_HINT
        )


def is_disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "no space left on device" in str(
        exc
    ).lower()


@contextlib.contextmanager
def disk_full_says_so(where: str) -> Iterator[None]:
    """Turn a full disk, however the library reports it (an IO error inside a query, a Parquet
    writer's error, a failed ROLLBACK after it), into one message that says nothing was committed."""
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(
                f"no space left on device while writing {where}: nothing was committed; "
                f"free some space (df -h {where}) and run the command again"
            ) from exc
        raise


@dataclass(frozen=True)
class Location:
    """Where a warehouse lives: a DuckLake catalog URL and the data files' path.

    catalog: `sqlite:/abs/path/catalog.sqlite` (default), `postgres:dbname=... host=...`,
    or a plain DuckDB file `duckdb:/path/catalog.ducklake`.
    data_path: a local folder or an object-store URL (`s3://bucket/prefix/`).
    """

    catalog: str
    data_path: str

    @property
    def scheme(self) -> str:
        return self.catalog.split(":", 1)[0] if ":" in self.catalog else "duckdb"


def extension_file(name: str) -> Path | None:
    """The `.duckdb_extension` file that the PyPI package `duckdb-extension-<name>` ships, if installed."""
    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    candidate = root / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    return candidate if candidate.exists() else None


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load an extension offline from its PyPI package, else through DuckDB's own INSTALL."""
    path = extension_file(name)
    if path is not None:
        con.execute(f"LOAD '{path}'")
        return
    try:
        con.execute(f"INSTALL {name}")
        con.execute(f"LOAD {name}")
    except duckdb.Error as exc:
        package = "duckdb-extension-" + name.replace("_", "-")
        raise LakeError(
            f"DuckDB extension '{name}' is not available offline and could not be installed "
            f"({clean(str(exc))}). Install it with: pip install '{package}=={duckdb.__version__}'"
        ) from exc


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(location: Location, read_only: bool = False) -> Lake:
    """Open one DuckDB connection with the warehouse attached as `lake`.

    The data path comes from the warehouse's config, not from the path the catalog was
    created with (OVERRIDE_DATA_PATH), so a moved folder or a re-pointed bucket works.
    An s3:// data path gets the environment's credentials as a TEMPORARY secret.
    """
    refuse_stored_password(location.catalog)
    # Only signed extensions load (DuckDB's default; the PyPI extension packages are signed builds).
    # DuckDB draws a progress bar on stdout for slow queries: it would corrupt `factory sql --format csv`.
    con = duckdb.connect(config={"allow_unsigned_extensions": "false"})
    con.execute("SET enable_progress_bar = false")
    load_extension(con, "ducklake")
    if location.scheme in _CATALOG_EXTENSIONS:
        load_extension(con, _CATALOG_EXTENSIONS[location.scheme])
    files = location.data_path.split("://", 1)[0] if storage.is_remote(location.data_path) else ""
    if files in _STORAGE_EXTENSIONS:
        load_extension(con, _STORAGE_EXTENSIONS[files])
        # httpfs copies AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN into settings
        # that duckdb_settings() prints (measured: `factory sql` showed the secret); the secret below
        # carries them instead.
        for setting in ("s3_access_key_id", "s3_secret_access_key", "s3_session_token"):
            con.execute(f"SET {setting} = ''")
    if files == "s3":
        _s3_secret(con)
    options = [f"DATA_PATH {quote(location.data_path)}", "OVERRIDE_DATA_PATH true"]
    if read_only:
        options.append("READ_ONLY")
    attach = f"ATTACH {quote('ducklake:' + location.catalog)} AS {ALIAS} ({', '.join(options)})"
    try:
        try:
            _retry(lambda: con.execute(attach), location=location)
        except SQLError as exc:
            # A process killed mid-commit leaves SQLite a hot journal that only a writer can roll
            # back; a read-only open would fail on it until the next write. Roll it back here.
            if not (read_only and "readonly database" in str(exc) and recover_sqlite(location)):
                raise
            _retry(lambda: con.execute(attach), location=location)
    except SQLError as exc:
        con.close()
        raise LakeError(_unreadable_catalog(location, exc)) from exc
    con.execute(f"USE {ALIAS}")
    return Lake(con, location, read_only)


def _s3_secret(con: duckdb.DuckDBPyConnection) -> None:
    """Hand the environment's S3 credentials to DuckDB as a TEMPORARY secret (in memory only).

    Without a key in the environment DuckDB keeps its defaults (anonymous requests); an
    access error then says which variables to set (`clean`).
    """
    settings = storage.s3_settings()
    if settings is None:
        return
    options = {
        "KEY_ID": quote(settings.key_id),
        "SECRET": quote(settings.secret),
        "REGION": quote(settings.region),
        "URL_STYLE": quote(settings.url_style),
        "USE_SSL": "true" if settings.use_ssl else "false",
    }
    if settings.session_token:
        options["SESSION_TOKEN"] = quote(settings.session_token)
    if settings.endpoint:
        options["ENDPOINT"] = quote(settings.endpoint)
    listed = ", ".join(f"{k} {v}" for k, v in options.items())
    try:
        con.execute(f"CREATE OR REPLACE TEMPORARY SECRET {S3_SECRET} (TYPE s3, {listed})")
    except duckdb.Error as exc:
        text = errors.scrub(str(exc), [settings.secret, settings.session_token]) or ""
        # `from None`: DuckDB's own exception would carry the statement, secret included.
        raise LakeError(f"DuckDB refused the S3 settings from the environment ({text}); {S3_HINT}") from None


def _unreadable_catalog(location: Location, exc: Exception) -> str:
    """What to say when the catalog cannot be opened: corrupt, missing, or not ours to read."""
    text = str(exc)
    if "not a database" in text:
        reason = "it is not a database (corrupt or replaced): restore it from a backup"
    elif "unable to open" in text or "ermission" in text:
        reason = "it cannot be opened (no permission, or the file is gone): check the path and its rights"
    elif "creating a new DuckLake is explicitly disabled" in text:
        reason = "it is empty, not a DuckLake catalog: restore it, or make a new warehouse with factory init"
    else:
        reason = text.splitlines()[0]
        if location.scheme == "postgres" and _PG_TROUBLE.search(text):
            reason += f"; {PG_HINT}"
        elif storage.is_remote(location.data_path) and _S3_TROUBLE.search(text):
            reason += f"; {S3_HINT}"
    return f"the warehouse catalog {location.catalog} cannot be read: {reason}"


def recover_sqlite(location: Location) -> bool:
    """Roll back a SQLite catalog's hot journal left by a killed writer; whether there was one.

    SQLite rolls a hot journal back when a connection that may write first reads the
    database, under its own locks, so this is safe beside live writers.
    """
    scheme, _, target = location.catalog.partition(":")
    journal = Path(target + "-journal")
    if scheme != "sqlite" or not journal.exists() or journal.stat().st_size == 0:
        return False
    with contextlib.closing(sqlite3.connect(target, timeout=30)) as catalog:
        catalog.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return True


def _retry(
    fn: Callable[[], T], attempts: int = 30, base_delay: float = 0.05, location: Location | None = None
) -> T:
    """Run fn, retrying with exponential back-off and jitter while the error is a lock or conflict;
    any other DuckDB error (or the last one) comes out as SQLError with DuckDB's message, scrubbed
    of secrets (`clean`)."""
    for attempt in range(attempts):
        try:
            return fn()
        except (duckdb.Error, SQLError) as exc:
            if not _RETRYABLE.search(str(exc)) or attempt == attempts - 1:
                if isinstance(exc, SQLError):
                    raise
                raise SQLError(clean(str(exc), location)) from None
            time.sleep(min(MAX_DELAY, base_delay * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


def default_author() -> str:
    """Who a commit is attributed to: $FACTORY_AUTHOR, else the login name."""
    try:
        return os.environ.get("FACTORY_AUTHOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Lake:
    """A DuckDB connection with the warehouse attached; the verbs every other module uses."""

    def __init__(self, con: duckdb.DuckDBPyConnection, location: Location, read_only: bool) -> None:
        self.con = con
        self.location = location
        self.read_only = read_only
        self.sandbox: FileAccess | None = None  # set by lock_down: every query is then checked
        self.rollbacks = 0  # transactions rolled back: each drops the temp views it created

    def close(self) -> None:
        self.con.close()

    def lock_down(self, allow_files: bool = False) -> None:
        """Make this read-only connection a sandbox for a user's SQL, with DuckDB's own settings.

        The lake is attached READ_ONLY (DuckDB refuses writes to it and to its catalog);
        extensions neither install nor load; file access is off except for the warehouse's
        data path (unless `allow_files`); then the configuration is locked, so no query can
        SET any of it back. On top, every query must pass `check_query` (one SELECT that
        calls only reading table functions): SQLite's driver opens files past DuckDB's
        settings, so ATTACH and sqlite_query stay refused by statement type and by name.
        """
        if not self.read_only:
            raise LakeError("only a read-only connection can be a sandbox")
        settings = [
            "SET autoinstall_known_extensions = false",
            "SET autoload_known_extensions = false",
            "SET allow_community_extensions = false",
        ]
        if not allow_files:
            data_path = self.location.data_path
            if storage.is_remote(data_path) and not data_path.endswith("/"):
                data_path += "/"  # s3://bucket/pre would also allow s3://bucket/prefix-of-another/
            settings += [
                f"SET allowed_directories = [{quote(data_path)}]",
                "SET enable_external_access = false",
            ]
        for setting in [*settings, "SET lock_configuration = true"]:
            self.con.execute(setting)
        self.sandbox = "any" if allow_files else "warehouse"

    def _checked(self, sql: str) -> str:
        if self.sandbox is not None:
            check_query(sql, self.sandbox)
            if self.sandbox == "warehouse" and storage.is_remote(self.location.data_path):
                check_remote_paths(sql)
        return sql

    # -- reading -------------------------------------------------------------------------------
    def frame(self, sql: str, params: Params = None) -> pl.DataFrame:
        """Run a query and return a polars frame (retrying while the catalog is locked)."""
        sql = self._checked(sql)
        return _retry(lambda: self.con.execute(sql, params or []).pl(), location=self.location)

    def row(self, sql: str, params: Params = None) -> tuple | None:
        """The first row of a query's result (None when it has none); for one-row queries.

        The whole result is fetched: a result left half-read keeps its scan open, and a scan of
        the SQLite catalog holds SQLite's read lock until the connection's next query (measured:
        a process queued for the writer lock held it, and the writer waited minutes to commit).
        """
        sql = self._checked(sql)
        rows = _retry(lambda: self.con.execute(sql, params or []).fetchall(), location=self.location)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Params = None) -> Any:
        row = self.row(sql, params)
        return None if row is None else row[0]

    @contextlib.contextmanager
    def registered(self, name: str, data: pa.Table | pl.DataFrame) -> Iterator[None]:
        """Expose an in-memory Arrow table or polars frame to SQL under a name, for the `with` block."""
        self.con.register(name, data.to_arrow() if isinstance(data, pl.DataFrame) else data)
        try:
            yield
        finally:
            self.con.unregister(name)

    def temp_view(self, name: str, sql: str) -> None:
        """(Re)define a temporary view of the factory's own SQL, on sandboxed connections too."""
        self.con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {sql}')

    def execute(self, sql: str, params: Params = None) -> None:
        if self.sandbox is not None:
            raise QueryRefused("a sandboxed connection only reads (use frame, row or scalar)")
        try:
            self.con.execute(sql, params or [])
        except duckdb.Error as exc:
            raise SQLError(clean(str(exc), self.location)) from None

    def table_folder(self, table: str) -> Path | None:
        """The local folder of a table's data files (None when they live in object storage).

        DuckLake's default layout, `<data path>/<schema>/<table>/`, which every table of a
        warehouse keeps (they are made by `init` with plain names). Read from the layout,
        not from the catalog's own tables: querying those directly holds SQLite locks.
        """
        if "://" in self.location.data_path:
            return None
        return Path(self.location.data_path) / "main" / table

    def history(self) -> pl.DataFrame:
        """DuckLake's own commit log: version, time, author, message, what changed."""
        return self.frame(
            f"SELECT snapshot_id AS version, snapshot_time AS committed_at, author, commit_message AS message, "
            f"changes::VARCHAR AS changes FROM {ALIAS}.snapshots() ORDER BY snapshot_id"
        )

    def stored_data_path(self) -> str | None:
        """The data path the catalog was created with (DuckLake's own metadata)."""
        return self.scalar(
            f"SELECT value FROM __ducklake_metadata_{ALIAS}.ducklake_metadata WHERE key = 'data_path'"
        )

    def version(self) -> int:
        return int(self.scalar(f"SELECT max(snapshot_id) FROM {ALIAS}.snapshots()"))

    # -- writing -------------------------------------------------------------------------------
    def write(
        self,
        message: str,
        fn: Callable[[Lake], T],
        author: str | None = None,
        attempts: int = 30,
        exclusive: bool = False,
    ) -> T:
        """Run fn inside one DuckLake transaction with an author and a commit message.

        On a commit conflict or a locked catalog the transaction is rolled back and fn runs
        again from the start, with exponential back-off and jitter, so fn must be safe to
        repeat (it reads what it needs inside the transaction).

        exclusive: no other exclusive write may commit between this one's start and its
        commit, on any machine, so a check that fn makes (a name is free, no identical job
        runs) still holds when it commits. DuckLake tables have no unique constraints and two
        appends both commit, so the catalog itself arbitrates: the write also rewrites one
        guard row of `meta`, and DuckLake refuses the second of two overlapping commits that
        delete from the same table; that one is retried from the start and sees the first
        (measured on PostgreSQL: without the guard, three processes creating one snapshot name
        all committed). On SQLite the database lock already serialises overlapping
        transactions; the guard adds one small rewrite of `meta` to the commit.
        """
        if self.read_only:
            raise LakeError("this warehouse connection is read-only; open it with read_only=False to write")
        who = author or default_author()

        def guarded(lk: Lake) -> T:
            lk.execute(f"UPDATE meta SET value = value WHERE key = {quote(GUARD_KEY)}")
            return fn(lk)

        with disk_full_says_so(self.location.data_path), self._writer_lock():
            try:
                return _retry(
                    lambda: self._attempt(message, guarded if exclusive else fn, who),
                    attempts=attempts,
                    location=self.location,
                )
            except SQLError as exc:
                if "readonly database" in str(exc):
                    raise LakeError(
                        f"the warehouse catalog {self.location.catalog} is read-only for this user: nothing "
                        "was committed; write with a user who may, or copy the warehouse"
                    ) from exc
                raise

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """One writer at a time per local catalog file (an advisory lock beside it).

        DuckLake's conflict rules let two appends to one table both commit; for imports
        that both saw a row as new, that would store it twice (on SQLite the catalog's
        own lock usually forces a retry first, but that is timing, not a rule). Writers
        on one machine take turns here instead, which also spares them lock retries; a
        catalog on a server (PostgreSQL) relies on DuckLake's conflict checks and retries.
        """
        scheme, _, target = self.location.catalog.partition(":")
        if scheme not in LOCAL_CATALOGS:
            yield
            return
        with open(target + ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _attempt(self, message: str, fn: Callable[[Lake], T], who: str) -> T:
        self.con.execute("BEGIN TRANSACTION")
        try:
            result = fn(self)
            self.con.execute(f"CALL ducklake_set_commit_message({quote(ALIAS)}, ?, ?)", [who, message])
            crash.point("lake.commit")
            self.con.execute("COMMIT")
            return result
        except BaseException:
            self.rollbacks += 1
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK")
            raise
