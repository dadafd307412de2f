"""The warehouse's tables, in one place, with the schema version checked on open.

Every table is append-mostly and lives in the DuckLake catalog, so a user can
read it with plain SQL (`factory sql`, or the DuckDB CLI after ATTACH):

- rows: every record ever ingested or generated, rejects included, with lineage.
- verdicts: append-only judgements by filters (keep or drop, with a reason).
- snapshots / snapshot_rows: named, immutable selections of row ids.
- llm_calls: every teacher request; also the cache that makes reruns free.
- jobs: generator / filter / train runs with status and progress.
- runs: training and evaluation runs on a snapshot.
- embeddings: per-row vectors, cached so that an incremental filter run only
  encodes new rows. sketches: MinHash signatures, written by versions before
  issue 14 (minhash now recomputes them, which costs less than reading them back).
- mcts_nodes: the IDEA-MCTS search trees (node, parent, action, instruction,
  reward, visits, value), so a rerun continues a search and SQL can inspect it.
- recipes / recipe_steps: recipes run with `factory run` (their text and resolved
  steps) and each step's identity; jobs, snapshots and runs a step made carry it in
  `recipe_step`.
- meta: the schema version.

The row id is a content hash of the normalised record (`row_id`), so it is the
same in every process and version, and re-importing a row never doubles it.
"""

from __future__ import annotations

import polars as pl
import polars_hash  # noqa: F401  (registers the `chash` namespace used by row_id)

SCHEMA_VERSION = 7
# Versions that differ from this one by added tables and columns only: opening one adds them.
_RECIPES = ("recipes", "recipe_steps")
ADDITIVE_FROM = {
    "2": ("embeddings", "sketches", "mcts_nodes", *_RECIPES),
    "3": ("mcts_nodes", *_RECIPES),
    "4": _RECIPES,
    "5": _RECIPES,
    "6": _RECIPES,
}
# Columns added to existing tables, by the version that added them.
ADDED_COLUMNS = {
    5: (("jobs", "lock_key"),),
    6: (("rows", "meta"), ("rows", "origin_file"), ("rows", "origin_line")),
    7: (("jobs", "recipe_step"), ("snapshots", "recipe_step"), ("runs", "recipe_step")),
}

MESSAGE_TYPE = "STRUCT(role VARCHAR, content VARCHAR)[]"
MESSAGE_DTYPE = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))  # the same in polars

# Column name -> DuckDB type, in table order.
ROWS: dict[str, str] = {
    "id": "VARCHAR",  # content hash of the normalised record (row_id)
    "kind": "VARCHAR",  # instruction | conversation | preference
    "system": "VARCHAR",  # system prompt, '' when none
    "instruction": "VARCHAR",  # the (last) user turn
    "input": "VARCHAR",  # optional context for the instruction, '' when none
    "output": "VARCHAR",  # the (last) assistant turn; the chosen one for preference rows
    "messages": MESSAGE_TYPE,  # the whole conversation when it is more than one exchange, else NULL
    "rejected": "VARCHAR",  # the rejected response of a preference row, else NULL
    "source": "VARCHAR",  # user-given name of where the rows came from
    "generator": "VARCHAR",  # plugin that produced the row (human, templated, distill, ...)
    "generator_params": "VARCHAR",  # JSON of the generator's settings for this row
    "teacher_model": "VARCHAR",  # model that wrote the row, when a teacher did
    "template_hash": "VARCHAR",  # hash of the prompt or import template used
    "parent_ids": "VARCHAR[]",  # rows this one was derived from
    "job_id": "VARCHAR",  # job that inserted the row
    "origin": "VARCHAR",  # file:line (or file:row) the row was read from
    "created_at": "TIMESTAMPTZ",
    "language": "VARCHAR",
    "domain": "VARCHAR",
    "tags": "VARCHAR[]",
    # Added in schema 6, so last (ALTER TABLE appends): kept outside the row id.
    "meta": "VARCHAR",  # JSON object of the source record's other fields (ids, names, categories): meta->>'name'
    "origin_file": "VARCHAR",  # the file a row was read from, relative to the imported folder
    "origin_line": "BIGINT",  # its line (JSONL, CSV) or record number (JSON, Parquet) in that file
}

TABLES: dict[str, dict[str, str]] = {
    "meta": {"key": "VARCHAR", "value": "VARCHAR"},
    "rows": ROWS,
    "verdicts": {
        "id": "VARCHAR",  # the judged row (joins rows USING (id))
        "filter": "VARCHAR",
        "run_id": "VARCHAR",
        "score": "DOUBLE",
        "keep": "BOOLEAN",
        "reason": "VARCHAR",  # snake_case reason, optionally followed by details
        "created_at": "TIMESTAMPTZ",
    },
    "snapshots": {
        "name": "VARCHAR",
        "parent": "VARCHAR",
        "message": "VARCHAR",
        "where_sql": "VARCHAR",
        "honour_verdicts": "BOOLEAN",
        "filter_runs": "VARCHAR[]",  # the filter runs whose verdicts were honoured
        "row_count": "BIGINT",
        "digest": "VARCHAR",  # sha256 over the sorted member ids
        "author": "VARCHAR",
        "created_at": "TIMESTAMPTZ",
        "lake_version": "BIGINT",  # DuckLake snapshot the selection was read from
        "query": "VARCHAR",  # SQL that reads exactly its rows from time-travelled tables, when one exists
        "recipe_step": "VARCHAR",  # identity of the recipe step that made it (recipe_steps), if any
    },
    "snapshot_rows": {
        "snapshot": "VARCHAR",
        "id": "VARCHAR",
        "row": "BIGINT",
    },  # row: DuckLake rowid of the row
    "llm_calls": {
        "key": "VARCHAR",  # hash of (backend, model, params, prompt, sample index)
        "backend": "VARCHAR",
        "model": "VARCHAR",
        "params": "VARCHAR",
        "prompt": "VARCHAR",  # the completion prompt, or the chat messages as JSON
        "sample": "BIGINT",  # which of the n samples for this prompt
        "response": "VARCHAR",
        "logprobs": "VARCHAR",  # JSON list of the sampled tokens' log-probabilities, when asked for
        "prompt_tokens": "BIGINT",
        "completion_tokens": "BIGINT",
        "latency_s": "DOUBLE",
        "finish_reason": "VARCHAR",  # stop | length | ...
        "error": "VARCHAR",  # why the attempt failed (NULL for an answer)
        "job_id": "VARCHAR",
        "created_at": "TIMESTAMPTZ",
    },
    "jobs": {
        "id": "VARCHAR",
        "kind": "VARCHAR",  # import | generate | filter | train | eval
        "plugin": "VARCHAR",
        "config": "VARCHAR",  # JSON
        "status": "VARCHAR",  # running | succeeded | failed | interrupted
        "progress": "VARCHAR",  # JSON checkpoint
        "stats": "VARCHAR",  # JSON summary
        "error": "VARCHAR",
        "pid": "BIGINT",
        "host": "VARCHAR",
        "author": "VARCHAR",
        "started_at": "TIMESTAMPTZ",
        "finished_at": "TIMESTAMPTZ",
        "lock_key": "VARCHAR",  # identical jobs (same plugin and config) share it and run one at a time
        "recipe_step": "VARCHAR",  # identity of the recipe step that ran it (recipe_steps), if any
    },
    "embeddings": {
        "id": "VARCHAR",  # the embedded row
        "model": "VARCHAR",  # embedding model (name or path)
        "field": "VARCHAR",  # what was embedded: instruction, instruction_input, output, record
        "vector": "FLOAT[]",  # normalised to unit length
        "created_at": "TIMESTAMPTZ",
    },
    "sketches": {
        "id": "VARCHAR",  # the sketched row
        "scheme": "VARCHAR",  # hash of what the signature depends on (key, shingles, permutations, seed)
        "signature": "BLOB",  # num_perm little-endian uint32 values
        "created_at": "TIMESTAMPTZ",
    },
    "mcts_nodes": {
        "tree": "VARCHAR",  # hash of the root row id and the search settings
        "node": "VARCHAR",  # hash of the path from the root
        "parent": "VARCHAR",  # NULL for the root
        "root_id": "VARCHAR",  # the seed row the tree grows from
        "depth": "BIGINT",
        "action": "VARCHAR",  # the evolution that made this node from its parent
        "instruction": "VARCHAR",
        "reward": "DOUBLE",  # quality + diversity + complexity when the node was evaluated
        "visits": "BIGINT",
        "value": "DOUBLE",  # sum of the rewards backed up through the node
        "job_id": "VARCHAR",
        "updated_at": "TIMESTAMPTZ",
    },
    "runs": {
        "id": "VARCHAR",
        "snapshot": "VARCHAR",
        "snapshot_digest": "VARCHAR",
        "trainer": "VARCHAR",
        "method": "VARCHAR",
        "config": "VARCHAR",
        "versions": "VARCHAR",
        "seed": "BIGINT",
        "metrics": "VARCHAR",
        "artifact_path": "VARCHAR",
        "status": "VARCHAR",
        "started_at": "TIMESTAMPTZ",
        "finished_at": "TIMESTAMPTZ",
        "recipe_step": "VARCHAR",  # identity of the recipe step that ran it (recipe_steps), if any
    },
    "recipes": {
        "digest": "VARCHAR",  # sha256 of the text
        "name": "VARCHAR",
        "path": "VARCHAR",  # where it was read from (first run)
        "text": "VARCHAR",  # the YAML as written
        "resolved": "VARCHAR",  # JSON: the steps with variables filled in
        "created_at": "TIMESTAMPTZ",
    },
    "recipe_steps": {
        "identity": "VARCHAR",  # hash of the step's verb, config and its inputs' identities
        "recipe": "VARCHAR",  # recipes.digest
        "step": "VARCHAR",  # the step's name in the recipe
        "verb": "VARCHAR",
        "config": "VARCHAR",  # JSON, as resolved
        "inputs": "VARCHAR",  # JSON: input name -> identity (file digest, snapshot digest, step identity)
        "created_at": "TIMESTAMPTZ",
    },
}

UNIT_SEP, RECORD_SEP = "\x1f", "\x1e"  # never in normalised text


def user_turn() -> pl.Expr:
    """The user turn of a single exchange: the instruction, then a blank line and the input if any."""
    return pl.concat_str(
        [pl.col("instruction"), pl.when(pl.col("input") != "").then(pl.lit("\n\n") + pl.col("input"))],
        ignore_nulls=True,
    )


def row_ids(rows: pl.DataFrame) -> pl.Series:
    """The row ids of a frame of rows columns: sha256 of the normalised record, first 128 bits in hex.

    The normalised record is system, then the turns as role/content pairs, then the
    rejected response, joined by control characters that normalised text never holds.
    A single exchange is stored as instruction/input/output and hashed as the user turn
    `instruction + "\\n\\n" + input` and the assistant turn, so an alpaca row and the
    same exchange imported as a conversation share an id. polars-hash computes
    standard sha256 (pinned in pyproject.toml): DuckDB's `sha256` or Python's hashlib
    over the same text give the same id.

    A single exchange's record is built by one `concat_str` of its pieces (a null system
    or output makes it null, a null instruction or input counts as empty, as in
    `user_turn`): nesting the user turn and the body in concatenations of their own
    copied every text three times, a third of the cost of hashing an import.
    """
    single = pl.concat_str(
        [
            pl.col("system"),
            pl.lit(RECORD_SEP + "user" + UNIT_SEP),
            pl.col("instruction").fill_null(""),
            pl.when(pl.col("input") != "").then(pl.lit("\n\n")).otherwise(pl.lit("")),
            pl.col("input").fill_null(""),
            pl.lit(RECORD_SEP + "assistant" + UNIT_SEP),
            pl.col("output"),
            pl.lit(RECORD_SEP),
            pl.col("rejected").fill_null(""),
        ]
    )
    record = single
    if rows["messages"].is_not_null().any():  # the list pass only where some row is a conversation
        turns = (
            pl.col("messages")
            .list.eval(pl.element().struct.field("role") + UNIT_SEP + pl.element().struct.field("content"))
            .list.join(RECORD_SEP)
        )
        conversation = pl.concat_str(
            [pl.col("system"), turns, pl.col("rejected").fill_null("")], separator=RECORD_SEP
        )
        record = pl.when(pl.col("messages").is_null()).then(single).otherwise(conversation)
    return rows.select(record.chash.sha2_256().str.slice(0, 32).alias("id")).to_series()


def row_text(key: str) -> pl.Expr:
    """The text of a row that filters compare or embed: the instruction, instruction + input, the
    output, or the whole record (every turn, the rejected response), fields joined by separators."""
    parts = {
        "instruction": [pl.col("instruction")],
        "output": [pl.col("output")],
        "instruction_input": [pl.col("instruction"), pl.col("input")],
        "record": [
            pl.col("system"),
            pl.col("instruction"),
            pl.col("input"),
            pl.col("output"),
            pl.col("messages").list.eval(pl.element().struct.field("content")).list.join("\x1e"),
            pl.col("rejected"),
        ],
    }[key]
    present = [pl.when(part != "").then(part) for part in parts]  # an empty field adds no separator
    return pl.concat_str(present, separator="\x1f", ignore_nulls=True).fill_null("")


def migration_sql(version: str) -> list[str]:
    """Statements that bring a warehouse of an additive older `version` to SCHEMA_VERSION."""
    created = ADDITIVE_FROM[version]
    altered = [
        f'ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "{column}" {TABLES[table][column]}'
        for added_in, columns in sorted(ADDED_COLUMNS.items())
        if added_in > int(version)
        for table, column in columns
        if table not in created
    ]
    return [create_sql(table) for table in created] + altered


def create_sql(table: str) -> str:
    columns = ", ".join(f'"{name}" {kind}' for name, kind in TABLES[table].items())
    return f"CREATE TABLE IF NOT EXISTS {table} ({columns})"


def column_list(table: str) -> str:
    return ", ".join(f'"{name}"' for name in TABLES[table])
