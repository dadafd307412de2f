"""User-given SQL, judged by DuckDB's own parser before it runs.

`factory sql` runs a user's query; snapshot `--where`, filter `--where`, select's
`score_sql` and distill's `--query` splice a user's SQL into the factory's own. Both are
held to one rule, read off DuckDB's parse (`extract_statements`, `json_serialize_sql`),
never off keywords in the text: one statement of type SELECT, calling only table
functions that read (`SAFE_TABLE_FUNCTIONS`); file readers only where DuckDB's own file
settings confine them. A spliced expression comes back as DuckDB re-renders it, so a
comment or a quote cannot change what the surrounding SQL means.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Literal

import duckdb

from factory.errors import FactoryError


class QueryRefused(FactoryError, RuntimeError):
    """User-given SQL that would do more than read the warehouse."""


# Table functions a user's query may call: they only read the warehouse or compute values.
# Everything else is refused by name (DuckLake's maintenance functions, sqlite_query, query(),
# json_execute_serialized_sql, ...), whatever the connection's rights.
SAFE_TABLE_FUNCTIONS = frozenset(
    """snapshot range generate_series unnest repeat repeat_row json_each json_tree
    duckdb_columns duckdb_constraints duckdb_databases duckdb_functions duckdb_keywords duckdb_schemas
    duckdb_tables duckdb_types duckdb_views duckdb_indexes duckdb_sequences duckdb_settings
    pragma_table_info table_info pragma_version version show show_tables show_databases summary
    ducklake_snapshots snapshots ducklake_table_info ducklake_current_snapshot current_snapshot
    ducklake_last_committed_snapshot last_committed_snapshot ducklake_table_changes table_changes
    ducklake_table_insertions table_insertions ducklake_table_deletions table_deletions
    ducklake_list_files list_files ducklake_settings settings ducklake_options options""".split()
)
# File readers: DuckDB's own file-system settings confine them (to the warehouse's data path in
# the `factory sql` sandbox), so they are allowed only there.
FILE_TABLE_FUNCTIONS = frozenset(
    """read_csv read_csv_auto sniff_csv read_json read_json_auto read_ndjson read_ndjson_auto
    read_json_objects read_json_objects_auto read_ndjson_objects read_parquet parquet_scan
    parquet_metadata parquet_schema parquet_file_metadata parquet_kv_metadata read_text read_blob
    glob""".split()
)
# Readers that open files through their own driver, past DuckDB's file-system settings: only
# when the user asked to read files (`factory sql --allow-files`).
DRIVER_TABLE_FUNCTIONS = frozenset({"sqlite_scan", "read_duckdb"})

FileAccess = Literal["none", "warehouse", "any"]
_EXPLAIN = re.compile(r"\s*EXPLAIN\s+(?!ANALY[SZ]E\b)(.*)\Z", re.IGNORECASE | re.DOTALL)
_WRITES = {"INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "COPY", "MERGE_INTO", "COPY_DATABASE"}
_parser: duckdb.DuckDBPyConnection | None = None


def _syntax_tree(sql: str) -> dict[str, Any]:
    """DuckDB's own parse of one SELECT statement, as JSON (json_serialize_sql)."""
    global _parser
    if _parser is None:
        _parser = duckdb.connect()
    tree = json.loads(_parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if tree.get("error"):
        raise QueryRefused(
            f"DuckDB cannot check this statement ({tree.get('error_message')}); write it as one SELECT"
        )
    return tree


def _calls(tree: Any) -> Iterator[tuple[str, str]]:
    """(kind, name) of every table function and every table read from a path or URL in a parse tree."""
    if isinstance(tree, dict):
        if tree.get("type") == "TABLE_FUNCTION":
            yield "function", str((tree.get("function") or {}).get("function_name", "")).lower()
        elif tree.get("type") == "BASE_TABLE" and re.search(r"[/\\:.]", str(tree.get("table_name", ""))):
            yield "path", str(tree["table_name"])
        for value in tree.values():
            yield from _calls(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _calls(value)


def check_query(sql: str, files: FileAccess = "none") -> None:
    """Refuse user SQL that is not one read-only SELECT (WITH, FROM-first, DESCRIBE, SUMMARIZE, ...).

    DuckDB's parser decides: exactly one statement of type SELECT, calling only table
    functions that read. `files` says which file readers are allowed: none (SQL run on a
    writer's connection), warehouse (the sandbox, where DuckDB confines them to the data
    path), or any (the sandbox with --allow-files).
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"the query cannot be parsed: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        hint = " (PIVOT without an IN list runs two: list the values, ON col IN ('a', 'b'))"
        raise QueryRefused(
            f"one statement at a time, got {len(statements)}" + (hint if "pivot" in sql.lower() else "")
        )
    kind = statements[0].type
    explained = _EXPLAIN.match(sql)
    if kind == duckdb.StatementType.EXPLAIN and explained:  # a plan only: check what it plans
        check_query(explained.group(1), files)
        return
    if kind != duckdb.StatementType.SELECT:
        hint = ""
        if kind.name in _WRITES:
            hint = "; write through factory import, filters, snapshots or the Python API"
        elif kind == duckdb.StatementType.EXPLAIN:
            hint = "; EXPLAIN ANALYZE runs the statement, EXPLAIN alone shows the plan"
        raise QueryRefused(
            f"only reading is allowed (SELECT, WITH, FROM, DESCRIBE, SUMMARIZE, EXPLAIN), not {kind.name}{hint}"
        )
    readers = FILE_TABLE_FUNCTIONS | DRIVER_TABLE_FUNCTIONS
    allowed_readers = {"none": frozenset(), "warehouse": FILE_TABLE_FUNCTIONS, "any": readers}[files]
    for what, name in _calls(_syntax_tree(sql)):
        if name in SAFE_TABLE_FUNCTIONS or name in allowed_readers or (what == "path" and files != "none"):
            continue
        if what == "path" or name in readers:
            where = "without --allow-files" if files == "warehouse" else "in SQL that is part of a write"
            raise QueryRefused(f"reading files ({name}) is not allowed {where}")
        raise QueryRefused(
            f"table function {name}() is not allowed: it can change or read beyond the warehouse"
        )


_DOT_SEGMENT = re.compile(r"(?:^|[/\\])\.{1,2}(?:[/\\]|$)")


def check_remote_paths(sql: str) -> None:
    """Refuse file paths that DuckDB's sandbox would let out of an object-store data path.

    DuckDB checks `allowed_directories` on the path as written, then resolves `..` in an
    s3:// URL before the request (measured: `s3://b/pre/../x.parquet`, allowed as under
    `s3://b/pre/`, fetched `s3://b/x.parquet`). So in the sandbox a file reader's paths must be
    plain text (or a list of texts), without `.` or `..` segments, and so must a path read as
    a table (`FROM 's3://...'`): no expression can build one.
    """

    def paths(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and re.search(r"[/\\:]", str(node.get("table_name", ""))):
                yield node["table_name"]
            if node.get("type") == "TABLE_FUNCTION":
                function = node.get("function") or {}
                if str(function.get("function_name", "")).lower() in FILE_TABLE_FUNCTIONS:
                    for child in function.get("children") or []:
                        if child.get("class") != "COMPARISON":  # named options (filename = true)
                            yield from _literal_paths(child)
            for value in node.values():
                yield from paths(value)
        elif isinstance(node, list):
            for value in node:
                yield from paths(value)

    for path in paths(_syntax_tree(sql)):
        if isinstance(path, str) and re.search(r"[?#]", path):
            # DuckDB reads s3_endpoint, s3_access_key_id, ... from a URL's query and would send the
            # request (signed, with the session token) to any host: a path is a path, nothing more.
            raise QueryRefused(f"reading {path} is not allowed: a path may not carry ? or # (URL parameters)")
        if not isinstance(path, str) or _DOT_SEGMENT.search(path):
            shown = path if isinstance(path, str) else "a computed path"
            raise QueryRefused(
                f"reading {shown!s} is not allowed: name the warehouse's files by a plain path "
                "(no . or .. segments, no expression)"
            )


def _literal_paths(node: dict[str, Any]) -> Iterator[Any]:
    """The texts of a file reader's path argument; a non-text (an expression) yields None."""
    if node.get("class") == "CONSTANT":
        value = node.get("value") or {}
        yield value.get("value") if (value.get("type") or {}).get("id") == "VARCHAR" else None
    elif node.get("class") == "FUNCTION" and node.get("function_name") == "list_value":
        for child in node.get("children") or []:
            yield from _literal_paths(child)
    else:
        yield None


def check_expression(sql: str) -> str:
    """A user-given SQL condition or expression, as DuckDB's parser writes it back: safe to splice.

    Refused unless it is one expression that reads only the warehouse (`check_query` with no
    file access). What comes back is DuckDB's own rendering of the parse (json_serialize_sql,
    then json_deserialize_sql): no comments, every operator parenthesised, so it means the
    same wherever it is spliced (`1) --` is just `1`).
    """
    check_query(f"SELECT ({sql})")
    tree = _syntax_tree(f"SELECT ({sql})")
    node = tree["statements"][0]["node"]
    extra = [
        key
        for key in ("where_clause", "having", "qualify", "sample", "group_expressions")
        if node.get(key) not in (None, [], {})
    ]
    if node.get("cte_map", {}).get("map"):
        extra.append("with")
    if node.get("type") != "SELECT_NODE" or node.get("modifiers") or extra or len(node["select_list"]) != 1:
        raise QueryRefused(f"expected one SQL expression, got: {sql}")
    if (node.get("from_table") or {}).get("type") != "EMPTY":
        raise QueryRefused(f"expected one SQL expression, got: {sql}")
    assert _parser is not None  # set by _syntax_tree
    text = _parser.execute("SELECT json_deserialize_sql(?::JSON)", [json.dumps(tree)]).fetchone()[0]
    if not text.startswith("SELECT "):
        raise QueryRefused(f"expected one SQL expression, got: {sql}")
    return f"({text.removeprefix('SELECT ')})"
