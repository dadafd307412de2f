"""Reading data files in batches, remembering where every record came from.

Readers turn JSONL, JSON, CSV, Parquet and folders written by HF `datasets`
(`save_to_disk`) into `Raw` batches: either an Arrow table with one type per
column (the fast path, parsed in C++) or a list of parsed records when a batch
had to be read line by line to find out exactly what is wrong with it. Every
record carries its origin, `file:line` for text files and `file#row` for the
others, and every unreadable record becomes a `Problem` naming it.

The fast path reads JSONL with pyarrow, which refuses mixed types instead of
silently converting them (polars would turn the number 5 into the string "5");
only a batch that fails is re-read line by line.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.json as pj
import pyarrow.parquet as pq

from factory.errors import InputError

CHUNK_BYTES = 32 << 20
DEFAULT_MAX_ROW_BYTES = 4 << 20
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_WHITESPACE = np.array([9, 10, 13, 32], dtype=np.uint8)
TOO_DEEP = "the JSON nests deeper than it can be read (about 900 levels); flatten it"


@dataclass(frozen=True)
class Problem:
    """One unreadable or invalid record: where it is, which field, a snake_case code, a message."""

    origin: str
    field: str | None
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.origin}: field '{self.field}'" if self.field else self.origin
        return f"{where}: {self.message} [{self.code}]"


class ReadError(InputError):
    """A file that cannot be read at all (missing, empty, wrong kind, mixed folder)."""


def jsonl_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a small JSONL file's `text`;
    a line that is not JSON is named as path:line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReadError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(
            f"the key '{key}' appears twice in one object; keep one (JSON leaves the choice to the reader, "
            "so we refuse rather than guess)"
        )
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object builder that refuses a key given twice (the stdlib keeps the last silently)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return record


def _json_message(exc: json.JSONDecodeError) -> str:
    """A JSON error as one sentence (the stdlib's messages may end in "at", as in "... character at")."""
    return f"malformed JSON: {exc.msg.removesuffix(' at')} at line {exc.lineno} column {exc.colno}"


def _bad_text(value: Any, path: str) -> str | None:
    """The path of the first string in a parsed value that is not valid Unicode (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and _bad_text(key, path) is not None:
            return f"{path}.{key}".lstrip(".")
        found = _bad_text(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def surrogate_problem(origin: str, record: dict[str, Any]) -> Problem | None:
    """A Problem when a parsed record holds a lone surrogate escape (\\ud800): JSON allows the
    escape, but the text is not Unicode and cannot be stored."""
    field = _bad_text(record, "")
    if field is None:
        return None
    return Problem(
        origin,
        field.encode("utf-8", "backslashreplace").decode() or None,  # the path may hold the bad key
        "bad_encoding",
        "a lone surrogate escape (\\ud800-\\udfff without its pair) is not a character; fix the escape",
    )


@dataclass
class Raw:
    """A batch as read: typed `table` or untyped `records`, one origin per record."""

    origins: pl.Series
    table: pa.Table | None = None
    records: list[dict] | None = None
    problems: list[Problem] = field(default_factory=list)
    bytes_read: int = 0
    warnings: list[str] = field(default_factory=list)
    lines_in_chunk: int = 0  # JSONL: how many lines the chunk this batch came from had

    @property
    def fields(self) -> set[str]:
        if self.table is not None:
            return set(self.table.column_names)
        names: set[str] = set()
        for record in (self.records or [])[:1000]:
            names.update(record)
        return names


@dataclass(frozen=True)
class ReadOptions:
    encoding: str = "utf-8"
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES
    batch_rows: int = 100_000


def data_files(path: Path) -> tuple[str, list[Path]]:
    """The kind of data at a path and the files to read, with clear errors for bad paths."""
    if not path.exists():
        raise ReadError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "hf", [path]
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        kinds = {KINDS.get(p.suffix.lower(), p.suffix.lower() or p.name) for p in files}
        if not files:
            raise ReadError(f"{path}: the folder has no data files")
        if len(kinds) > 1:
            listing = ", ".join(sorted(kinds))
            raise ReadError(
                f"{path}: the folder mixes kinds of files ({listing}); import one kind at a time: "
                "each file on its own, or a folder that holds files of one kind"
            )
        kind = kinds.pop()
        if kind not in KINDS.values():
            raise ReadError(
                f"{path}: no readable data files (found {kind}); expected {', '.join(sorted(KINDS))}"
            )
        return kind, files
    if not path.is_file():
        raise ReadError(f"{path}: not a regular file or folder (a pipe or device cannot be imported)")
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise ReadError(
            f"{path}: unknown file type '{path.suffix}'; expected one of {', '.join(sorted(KINDS))}"
        )
    if path.stat().st_size == 0:
        raise ReadError(f"{path}: the file is empty; nothing to import")
    return kind, [path]


def prefetched(batches: Iterator[Raw], depth: int = 2) -> Iterator[Raw]:
    """Read ahead in a background thread, so parsing the next chunk overlaps work on this one.

    pyarrow's parser and the byte scans release the GIL, so on two cores reading and
    checking really run side by side. Errors are re-raised in the consumer.
    """
    queue: Queue = Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                queue.put(batch)
            queue.put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            queue.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="factory-reader")
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(Empty):
                queue.get(timeout=0.05)


def is_empty(file: Path) -> bool:
    """Whether a data file holds nothing: no bytes, or only whitespace (and a byte-order mark)."""
    if not file.is_file():
        return False
    size = file.stat().st_size
    if size == 0:
        return True
    if size > 4096 or file.suffix.lower() == ".parquet":
        return False
    return not file.read_bytes().removeprefix(UTF8_BOM).strip()


def read(path: Path, options: ReadOptions) -> Iterator[Raw]:
    """Read a file or folder as batches of records."""
    kind, files = data_files(path)
    for file in files:
        if is_empty(file):
            raise ReadError(f"{file}: the file is empty; nothing to import")
        yield from read_file(kind, file, options)


def read_file(kind: str, file: Path, options: ReadOptions) -> Iterator[Raw]:
    """Read one file (or HF datasets folder) of a known kind as batches of records."""
    reader = {
        "jsonl": read_jsonl,
        "json": read_json,
        "csv": read_csv,
        "parquet": read_parquet,
        "hf": read_hf,
    }[kind]
    yield from reader(file, options)


# -- JSONL ---------------------------------------------------------------------------------------
def _lines(chunk: memoryview) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end and blank flag of every line in a chunk (without its newline)."""
    if not chunk:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=bool)
    arr = np.frombuffer(chunk, dtype=np.uint8)
    newlines = np.flatnonzero(arr == 10)
    ends = newlines if arr[-1] == 10 else np.append(newlines, len(arr))
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.array([], dtype=np.int64)
    blank = ends == starts
    # A line whose first byte is whitespace is rare: look at those few one by one.
    maybe = np.flatnonzero(~blank & np.isin(arr[np.minimum(starts, len(arr) - 1)], _WHITESPACE))
    for k in maybe.tolist():
        blank[k] = not bytes(chunk[starts[k] : ends[k]]).strip()
    return starts, ends, blank


def _origins(label: str, numbers: np.ndarray, sep: str = ":") -> pl.Series:
    return (
        pl.select(pl.format("{}" + sep + "{}", pl.lit(label), pl.Series(numbers)))
        .to_series()
        .alias("_origin")
    )


def _codec(encoding: str) -> str:
    """The codec's own name (utf8, UTF_8 and utf-8 are one codec); the name as given if unknown."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        return encoding.lower()


def _names_utf8(encoding: str) -> bool:
    return _codec(encoding) == "utf-8"


def _check_start(data: bytes, label: str, encoding: str) -> tuple[bytes, list[str]]:
    """Strip a UTF-8 byte-order mark (with a warning); refuse a UTF-16 one unless asked for."""
    if data.startswith(UTF8_BOM) and _names_utf8(encoding):
        return data[len(UTF8_BOM) :], [f"{label}:1: removed a UTF-8 byte-order mark at the start of the file"]
    if data.startswith(UTF16_BOMS) and not _codec(encoding).startswith("utf-16"):
        raise ReadError(f"{label}:1: the file is UTF-16 encoded (byte-order mark); pass --encoding utf-16")
    return data, []


def read_jsonl(path: Path, options: ReadOptions) -> Iterator[Raw]:
    label = str(path)
    if not _names_utf8(options.encoding):
        # Other encodings are decoded whole, then read as UTF-8 from memory.
        raw = path.read_bytes()
        raw, warnings = _check_start(raw, label, options.encoding)
        try:
            text = raw.decode(options.encoding)
        except UnicodeDecodeError as exc:
            raise ReadError(f"{label}: not valid {options.encoding} at byte {exc.start}") from exc
        yield from _jsonl_stream(io.BytesIO(text.lstrip("\ufeff").encode()), label, options, warnings)
        return
    with path.open("rb") as handle:
        # A byte-order mark is dealt with before the lines are cut, so it counts toward no line's size.
        _, warnings = _check_start(handle.read(3), label, options.encoding)
        handle.seek(len(UTF8_BOM) if warnings else 0)
        yield from _jsonl_stream(handle, label, options, warnings)


def _jsonl_stream(
    handle: io.BufferedIOBase, label: str, options: ReadOptions, warnings: list[str]
) -> Iterator[Raw]:
    line = 1
    for chunk, cut in _line_chunks(handle, options.max_row_bytes):
        lines = 0
        for raw in _parse_chunk(chunk, label, line, options, cut):
            raw.warnings = warnings + raw.warnings
            warnings = []
            lines = raw.lines_in_chunk or lines
            yield raw
        line += lines


def _line_chunks(handle: io.BufferedIOBase, max_row_bytes: int) -> Iterator[tuple[memoryview, bool]]:
    """The stream in chunks of whole lines (about CHUNK_BYTES each), as views of one reused buffer.

    Reading into one buffer spares a fresh allocation and two copies of every chunk (a
    third of the reader's time on a large file). A view is valid only until the next
    one is asked for: the parsers copy what they keep. A line that does not fit in
    `max_row_bytes` is handed over as one cut-off chunk, flagged (the line-by-line parse
    names it), and the rest of it is skipped, so the lines after it keep their numbers.
    """
    buf = bytearray(CHUNK_BYTES)
    fill = 0  # bytes held: the unfinished last line of the previous chunk, then new ones
    eof = skipping = False
    while True:
        while not eof and fill < len(buf):
            with memoryview(buf) as view:
                got = handle.readinto(view[fill:]) or 0
            eof, fill = got == 0, fill + got
        if skipping:  # the rest of a line too long to read
            end = buf.find(b"\n", 0, fill)
            if end < 0:
                fill, skipping = 0, not eof
                continue
            buf[: fill - end - 1] = buf[end + 1 : fill]
            fill, skipping = fill - end - 1, False
            continue
        if fill == 0:
            return
        cut = buf.rfind(b"\n", 0, fill) + 1 or (fill if eof else 0)
        if cut == 0 and fill <= max_row_bytes:  # a line longer than the buffer: make room for it
            grown = bytearray(fill + min(len(buf), max_row_bytes + 1 - fill))
            grown[:fill] = buf[:fill]  # a new buffer: a view still held elsewhere would forbid resizing
            buf = grown
            continue
        if cut == 0:
            cut, skipping = fill, True
        with memoryview(buf) as view, view[:cut] as chunk:
            yield chunk, skipping
        buf[: fill - cut] = buf[cut:fill]
        fill -= cut


def _parse_chunk(
    chunk: memoryview, label: str, first_line: int, options: ReadOptions, cut: bool = False
) -> Iterator[Raw]:
    """The records of a chunk of whole lines (or of one line cut off at `max_row_bytes`: `cut`)."""
    starts, ends, blank = _lines(chunk)
    lengths = ends - starts
    numbers = np.arange(first_line, first_line + len(starts))
    # Arrow skips a byte-order mark at the start of its input: one there was not the file's
    # first bytes (those are gone), so the line-by-line parse reports it.
    if (
        not cut
        and not (lengths > options.max_row_bytes).any()
        and bytes(chunk[:3]) != UTF8_BOM
        and _is_utf8(chunk)
    ):
        try:
            block = max(4 << 20, int(lengths.max(initial=0)) + 2)
            table = pj.read_json(
                pa.BufferReader(pa.py_buffer(chunk)),
                read_options=pj.ReadOptions(block_size=block, use_threads=False),
            )
        except (pa.ArrowInvalid, UnicodeDecodeError):
            table = None
        if table is not None and table.num_rows == 0 and not (~blank).any():  # blank lines only
            yield Raw(origins=_origins(label, numbers[:0]), records=[], lines_in_chunk=len(starts))
            return
        if table is not None and table.num_rows == int((~blank).sum()):
            kept = numbers[~blank]
            for start in range(0, table.num_rows, options.batch_rows):
                part = table.slice(start, options.batch_rows)
                yield Raw(
                    origins=_origins(label, kept[start : start + part.num_rows]),
                    table=part,
                    bytes_read=len(chunk) if start == 0 else 0,
                    lines_in_chunk=len(starts),
                )
            return
    yield _parse_lines_slowly(bytes(chunk), starts, ends, blank, numbers, label, options, cut)


def _is_utf8(chunk: memoryview) -> bool:
    """pyarrow's JSON reader does not validate UTF-8 inside strings, so check the bytes first.

    Arrow validates the chunk as one binary value cast to a string, in place and an
    order of magnitude faster than decoding it in Python.
    """
    offsets = pa.py_buffer(np.array([0, len(chunk)], dtype=np.int64))
    value = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(chunk)])
    try:
        value.cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def _parse_lines_slowly(
    chunk: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    blank: np.ndarray,
    numbers: np.ndarray,
    label: str,
    options: ReadOptions,
    cut: bool = False,
) -> Raw:
    """Line-by-line parse of a chunk the fast path refused, naming each bad line (`cut`: the
    chunk is the start of one line longer than the limit, the rest of which was skipped)."""
    records: list[dict] = []
    kept: list[int] = []
    problems: list[Problem] = []
    for start, end, is_blank, number in zip(
        starts.tolist(), ends.tolist(), blank.tolist(), numbers.tolist(), strict=True
    ):
        if is_blank:
            continue
        origin = f"{label}:{number}"
        if end - start > options.max_row_bytes:
            size = (end - start) / (1 << 20)
            problems.append(
                Problem(
                    origin,
                    None,
                    "row_too_large",
                    f"the line is {'more than ' if cut else ''}{size:.1f} MiB, over the limit of "
                    f"{options.max_row_bytes / (1 << 20):.1f} MiB (raise it with --max-row-bytes)",
                )
            )
            continue
        raw = chunk[start:end]
        if raw.startswith(UTF8_BOM):
            problems.append(
                Problem(
                    origin,
                    None,
                    "bom",
                    "a byte-order mark inside the file (were files concatenated?); remove it",
                )
            )
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                Problem(
                    origin,
                    None,
                    "bad_encoding",
                    f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "convert the file to UTF-8 or pass --encoding (e.g. latin-1)",
                )
            )
            continue
        if "\x00" in text:
            column = text.index("\x00") + 1
            problems.append(
                Problem(
                    origin, None, "nul_byte", f"a raw NUL byte at column {column}; remove it from the file"
                )
            )
            continue
        try:
            record = json.loads(text, object_pairs_hook=_object)
            problem = surrogate_problem(origin, record) if isinstance(record, dict) else None
        except json.JSONDecodeError as exc:
            problems.append(Problem(origin, None, "malformed_json", _json_message(exc)))
            continue
        except _DuplicateKey as exc:
            problems.append(Problem(origin, exc.key, "duplicate_key", str(exc)))
            continue
        except RecursionError:
            problems.append(Problem(origin, None, "too_deep", TOO_DEEP))
            continue
        if not isinstance(record, dict):
            problems.append(
                Problem(origin, None, "not_an_object", f"expected a JSON object, got {type(record).__name__}")
            )
            continue
        if problem is not None:
            problems.append(problem)
            continue
        records.append(record)
        kept.append(number)
    return Raw(
        origins=_origins(label, np.array(kept, dtype=np.int64)),
        records=records,
        problems=problems,
        bytes_read=len(chunk),
        lines_in_chunk=len(starts),
    )


# -- JSON array ----------------------------------------------------------------------------------
def read_json(path: Path, options: ReadOptions) -> Iterator[Raw]:
    label = str(path)
    data, warnings = _check_start(path.read_bytes(), label, options.encoding)
    try:
        text = data.decode(options.encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ReadError(
            f"{label}:{line}: not valid {options.encoding} (byte 0x{data[exc.start]:02x}); "
            "convert the file or pass --encoding"
        ) from exc
    if not text.strip():
        raise ReadError(f"{label}: the file is empty; nothing to import")
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ReadError(f"{label}:{line}: a raw NUL byte; remove it from the file [nul_byte]")
    try:
        parsed = json.loads(text, object_pairs_hook=_object)
    except RecursionError as exc:
        raise ReadError(f"{label}: {TOO_DEEP} [too_deep]") from exc
    except json.JSONDecodeError as exc:
        hint = " (is this JSON Lines? name it .jsonl)" if exc.pos == 0 or "Extra data" in exc.msg else ""
        raise ReadError(f"{label}:{exc.lineno}: {_json_message(exc)}{hint}") from exc
    except _DuplicateKey as exc:
        raise ReadError(f"{label}: {exc} [duplicate_key]") from exc
    if isinstance(parsed, dict):  # one record: documented (README, Import)
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise ReadError(f"{label}: expected a JSON array of records, got {type(parsed).__name__}")
    for start in range(0, max(len(parsed), 1), options.batch_rows):
        items = parsed[start : start + options.batch_rows]
        records, kept, problems = [], [], []
        for k, item in enumerate(items, start=start + 1):
            try:
                problem = surrogate_problem(f"{label}#{k}", item) if isinstance(item, dict) else None
            except RecursionError:
                problem = Problem(f"{label}#{k}", None, "too_deep", TOO_DEEP)
            if problem is not None:
                problems.append(problem)
            elif isinstance(item, dict):
                records.append(item)
                kept.append(k)
            else:
                problems.append(
                    Problem(
                        f"{label}#{k}",
                        None,
                        "not_an_object",
                        f"expected a JSON object, got {type(item).__name__}",
                    )
                )
        yield Raw(
            origins=_origins(label, np.array(kept, dtype=np.int64), sep="#"),
            records=records,
            problems=problems,
            bytes_read=len(data) if start == 0 else 0,
            warnings=warnings,
        )
        warnings = []


# -- CSV -----------------------------------------------------------------------------------------
def read_csv(path: Path, options: ReadOptions) -> Iterator[Raw]:
    label = str(path)
    csv.field_size_limit(max(options.max_row_bytes, 1 << 17))
    head = path.read_bytes()[:4]
    _, warnings = _check_start(head, label, options.encoding)
    encoding = "utf-8-sig" if warnings else options.encoding
    with path.open("r", encoding=encoding, newline="") as handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader)
        except StopIteration as exc:
            raise ReadError(f"{label}: the file is empty; nothing to import") from exc
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ReadError(f"{label}:1: cannot read the header: {exc}") from exc
        header = [h.strip() for h in header]
        doubled = sorted({h for h in header if header.count(h) > 1})
        if doubled:
            raise ReadError(
                f"{label}:1: the header names {', '.join(map(repr, doubled))} twice; rename one "
                "[duplicate_key]"
            )
        records: list[dict] = []
        kept: list[int] = []
        problems: list[Problem] = []
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                problems.append(
                    Problem(f"{label}:{start}", None, "broken_csv", f"{exc} (an unclosed or stray quote?)")
                )
                if "end of data" in str(exc):
                    break
                continue
            except UnicodeDecodeError as exc:
                problems.append(
                    Problem(
                        f"{label}:{start}",
                        None,
                        "bad_encoding",
                        f"not valid {options.encoding} ({exc.reason}); convert the file or pass --encoding",
                    )
                )
                break
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                problems.append(
                    Problem(
                        f"{label}:{start}",
                        None,
                        "wrong_field_count",
                        f"has {len(values)} fields, the header has {len(header)}",
                    )
                )
                continue
            records.append(dict(zip(header, values, strict=True)))
            kept.append(start)
            if len(records) >= options.batch_rows:
                yield Raw(
                    origins=_origins(label, np.array(kept)),
                    records=records,
                    problems=problems,
                    warnings=warnings,
                )
                records, kept, problems, warnings = [], [], [], []
        yield Raw(
            origins=_origins(label, np.array(kept, dtype=np.int64)),
            records=records,
            problems=problems,
            warnings=warnings,
            bytes_read=path.stat().st_size,
        )


# -- Parquet and HF datasets folders --------------------------------------------------------------
def _table_batches(tables: Iterator[pa.Table], label: str) -> Iterator[Raw]:
    row = 1
    for table in tables:
        yield Raw(origins=_origins(label, np.arange(row, row + table.num_rows), sep="#"), table=table)
        row += table.num_rows


def read_parquet(path: Path, options: ReadOptions) -> Iterator[Raw]:
    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ReadError(f"{path}: not a readable Parquet file ({exc})") from exc
    batches = (pa.Table.from_batches([b]) for b in handle.iter_batches(batch_size=options.batch_rows))
    yield from _table_batches(batches, str(path))


def read_hf(path: Path, options: ReadOptions) -> Iterator[Raw]:
    """A folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict's, every split)."""
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        for split in splits:
            yield from read_hf(path / split, options)
        return
    state = json.loads((path / "state.json").read_text())
    files = [path / f["filename"] for f in state.get("_data_files", [])]
    if not files:
        raise ReadError(f"{path}: state.json lists no data files")

    def tables() -> Iterator[pa.Table]:
        for file in files:
            with pa.memory_map(str(file)) as source:
                reader = ipc.open_stream(source)
                for batch in reader:
                    table = pa.Table.from_batches([batch])
                    for start in range(0, table.num_rows, options.batch_rows):
                        yield table.slice(start, options.batch_rows)

    yield from _table_batches(tables(), str(path))
