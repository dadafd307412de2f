"""Bad input: each case gets an error naming the file, the line (or row) and the field.

With on_error=fail (the default) nothing is committed; with on_error=skip the good
rows land and a rejects report lists file:line, field and reason.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import polars as pl
import pytest

import factory
from factory.formats import readers
from factory.formats.readers import ReadError
from generators.human import ImportFailed

GOOD = {"instruction": "Name a prime", "input": "", "output": "7"}
GOOD2 = {"instruction": "Name an even number", "input": "", "output": "4"}


def _jsonl(lines: list[str | bytes]) -> bytes:
    return b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines)


CASES = {
    # name: (file name, bytes, expected message pattern, good rows)
    "malformed_json": (
        "a.jsonl",
        _jsonl([json.dumps(GOOD), '{"instruction": "x", "output": ', json.dumps(GOOD2)]),
        r"a\.jsonl:2: malformed JSON",
        2,
    ),
    "wrong_encoding": (
        "a.jsonl",
        _jsonl(
            [json.dumps(GOOD), b'{"instruction": "caf' + b"\xe9" + b'", "output": "x"}', json.dumps(GOOD2)]
        ),
        r"a\.jsonl:2: not valid UTF-8 \(byte 0xe9",
        2,
    ),
    "bom_inside": (
        "a.jsonl",
        _jsonl([json.dumps(GOOD), b"\xef\xbb\xbf" + json.dumps(GOOD2).encode()]),
        r"a\.jsonl:2: a byte-order mark inside the file",
        1,
    ),
    "missing_field": (
        "a.jsonl",
        _jsonl([json.dumps(GOOD), json.dumps({"instruction": "Say hi"}), json.dumps(GOOD2)]),
        r"a\.jsonl:2: field 'output': is missing",
        2,
    ),
    "empty_instruction": (
        "a.jsonl",
        _jsonl([json.dumps(GOOD), json.dumps({"instruction": "  ", "output": "x"})]),
        r"a\.jsonl:2: field 'instruction': is empty",
        1,
    ),
    "empty_output": (
        "a.jsonl",
        _jsonl([json.dumps({"instruction": "Say", "output": ""}), json.dumps(GOOD)]),
        r"a\.jsonl:1: field 'output': is empty",
        1,
    ),
    "non_string": (
        "a.jsonl",
        _jsonl([json.dumps(GOOD), json.dumps({"instruction": "2+2", "output": 4})]),
        r"a\.jsonl:2: field 'output': must be a string, got number",
        1,
    ),
    "non_string_turn": (
        "c.jsonl",
        _jsonl(
            [
                json.dumps(
                    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ["x"]}]}
                ),
                json.dumps(
                    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
                ),
            ]
        ),
        r"c\.jsonl:1: field 'messages\[1\]\.content': must be a string, got list",
        1,
    ),
    "unknown_role": (
        "c.jsonl",
        _jsonl(
            [
                json.dumps(
                    {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]}
                ),
                json.dumps(
                    {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
                ),
            ]
        ),
        r"c\.jsonl:1: field 'conversations\[1\]\.from': unknown role 'robot'",
        1,
    ),
    "nul_byte": (
        "a.jsonl",
        _jsonl([json.dumps({"instruction": "a\u0000b", "output": "x"}), json.dumps(GOOD)]),
        r"a\.jsonl:1: field 'instruction': contains a NUL byte",
        1,
    ),
    "huge_row": (
        "a.jsonl",
        _jsonl(
            [
                json.dumps(GOOD),
                json.dumps({"instruction": "x" * (10 << 20), "output": "y"}),
                json.dumps(GOOD2),
            ]
        ),
        r"a\.jsonl:2: the line is 10\.0 MiB, over the limit",
        2,
    ),
    "csv_broken_quote": (
        "a.csv",
        b'instruction,input,output\n"Name a prime",,7\n"Say ""hi""",,"hi\nEven number,,4\n',
        r"a\.csv:3: .*(unclosed or stray quote)",
        1,
    ),
    "csv_field_count": (
        "a.csv",
        b"instruction,input,output\nName a prime,,7\nSay hi,,hi,extra\n",
        r"a\.csv:3: has 4 fields, the header has 3",
        1,
    ),
    "parquet_non_string": ("a.parquet", None, r"a\.parquet#2: field 'output': is empty", 2),
    "raw_nul_byte": (
        "a.jsonl",
        _jsonl([json.dumps(GOOD), b'{"instruction": "a\x00b", "output": "x"}', json.dumps(GOOD2)]),
        r"a\.jsonl:2: a raw NUL byte at column 19",
        2,
    ),
    "control_character": (
        "a.jsonl",
        _jsonl([json.dumps(GOOD), b'{"instruction": "a\x01b", "output": "x"}', json.dumps(GOOD2)]),
        r"a\.jsonl:2: malformed JSON: Invalid control character at line 1 column 19( \[|$)",
        2,
    ),
    "lone_surrogate": (
        "a.jsonl",
        _jsonl(
            [json.dumps(GOOD), '{"instruction": "broken \\ud800 text", "output": "x"}', json.dumps(GOOD2)]
        ),
        r"a\.jsonl:2: field 'instruction': a lone surrogate escape",
        2,
    ),
    "lone_surrogate_in_a_turn": (
        "c.jsonl",
        _jsonl(
            [
                '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\\udfff"}]}',
                json.dumps(
                    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
                ),
            ]
        ),
        r"c\.jsonl:1: field 'messages\[1\]\.content': a lone surrogate escape",
        1,
    ),
    "lone_surrogate_in_json_array": (
        "a.json",
        json.dumps([GOOD, {"instruction": "x\ud800", "output": "y"}, GOOD2]).encode(),
        r"a\.json#2: field 'instruction': a lone surrogate escape",
        2,
    ),
    "too_deep": (
        "a.jsonl",
        _jsonl(
            [
                json.dumps(GOOD),
                '{"instruction": ' + "[" * 5000 + "]" * 5000 + ', "output": "x"}',
                json.dumps(GOOD2),
            ]
        ),
        r"a\.jsonl:2: the JSON nests deeper than it can be read",
        2,
    ),
    "duplicate_key": (
        "a.jsonl",
        _jsonl([json.dumps(GOOD), '{"instruction": "a", "output": "x", "output": "y"}', json.dumps(GOOD2)]),
        r"a\.jsonl:2: field 'output': the key 'output' appears twice in one object",
        2,
    ),
}


def _write(tmp_path: Path, name: str, data: bytes | None) -> Path:
    path = tmp_path / name
    if data is None:
        pl.DataFrame({"instruction": ["a", "b", "c"], "output": ["x", "", "z"]}).write_parquet(path)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_fail_commits_nothing_and_names_the_place(wh, tmp_path, case):
    name, data, pattern, _ = CASES[case]
    path = _write(tmp_path, name, data)
    before = wh.lake.version()
    with pytest.raises(ImportFailed, match=pattern):
        factory.import_file(wh, str(path))
    assert wh.count() == 0
    job = wh.jobs().row(0, named=True)
    assert job["status"] == "failed" and job["error"]
    assert wh.sql("SELECT count(*) AS n FROM rows AT (VERSION => ?)", [before])["n"][0] == 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_imports_good_rows_and_reports_rejects(wh, tmp_path, case):
    name, data, pattern, good = CASES[case]
    path = _write(tmp_path, name, data)
    summary = factory.import_file(wh, str(path), on_error="skip", rejects=str(tmp_path / "rejects.csv"))
    assert summary.inserted == good and wh.count() == good
    with open(tmp_path / "rejects.csv", newline="") as handle:
        rejects = list(csv.DictReader(handle))
    assert len(rejects) >= summary.rejected >= 1
    assert summary.rejected == len({r["origin"] for r in rejects})
    line = " ".join(
        f"{r['origin']}: field '{r['field']}': {r['message']}"
        if r["field"]
        else f"{r['origin']}: {r['message']}"
        for r in rejects
    )
    assert re.search(pattern, line), line
    assert " at at " not in line
    assert all(r["code"] and r["code"] == r["code"].lower() for r in rejects)


def test_bom_at_start_is_removed_with_a_warning(wh, tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _jsonl([json.dumps(GOOD)]))
    summary = factory.import_file(wh, str(path))
    assert summary.inserted == 1
    assert summary.warnings == [f"{path}:1: removed a UTF-8 byte-order mark at the start of the file"]


def test_utf16_file_asks_for_encoding_then_imports(wh, tmp_path):
    path = tmp_path / "u16.jsonl"
    path.write_bytes(_jsonl([json.dumps(GOOD, ensure_ascii=False)]).decode().encode("utf-16"))
    with pytest.raises(ReadError, match=r"u16\.jsonl:1: the file is UTF-16 encoded .*--encoding utf-16"):
        factory.import_file(wh, str(path))
    assert factory.import_file(wh, str(path), encoding="utf-16").inserted == 1


def test_latin1_with_encoding_flag(wh, tmp_path):
    path = tmp_path / "l1.jsonl"
    path.write_bytes('{"instruction": "Caf\u00e9?", "output": "Oui"}\n'.encode("latin-1"))
    assert factory.import_file(wh, str(path), encoding="latin-1").inserted == 1
    assert wh.sql("SELECT instruction FROM rows")["instruction"][0] == "Caf\u00e9?"


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        ("empty_file", r"empty\.jsonl: the file is empty"),
        ("blank_lines", r"blank\.jsonl: the file is empty"),
        ("missing_path", r"nope\.jsonl: no such file or folder"),
        ("mixed_folder", r"mixed: the folder mixes kinds of files \(csv, jsonl\)"),
        ("unknown_suffix", r"notes\.txt: unknown file type"),
        ("json_not_array", r"scalar\.json: expected a JSON array of records, got int"),
        ("undetectable", r"odd\.jsonl: cannot tell the format from the fields \['a', 'b'\]"),
    ],
)
def test_unreadable_inputs(wh, tmp_path, setup, pattern):
    def file(name: str, data: bytes) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    paths = {
        "empty_file": lambda: file("empty.jsonl", b""),
        "blank_lines": lambda: file("blank.jsonl", b"\n  \n"),
        "missing_path": lambda: tmp_path / "nope.jsonl",
        "mixed_folder": lambda: _mixed(tmp_path / "mixed"),
        "unknown_suffix": lambda: file("notes.txt", b"hi"),
        "json_not_array": lambda: file("scalar.json", b"5"),
        "undetectable": lambda: file("odd.jsonl", b'{"a": "1", "b": "2"}\n'),
    }
    with pytest.raises(ReadError, match=pattern):
        factory.import_file(wh, str(paths[setup]()))
    assert wh.count() == 0


def _mixed(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps(GOOD) + "\n")
    (folder / "b.csv").write_text("instruction,output\nx,y\n")
    return folder


def test_config_errors_name_the_flag(tmp_path):
    from generators.human import ImportConfig

    with pytest.raises(ValueError, match="--map: 'prompt' is not target=source"):
        ImportConfig(map="prompt")
    with pytest.raises(ValueError, match="on_error"):
        ImportConfig(on_error="ignore")


def _numbered(n: int, width: int) -> list[str]:
    """n alpaca lines, each padded to about `width` bytes, numbered in their instruction."""
    return [
        json.dumps({"instruction": f"task {k} " + "x" * width, "output": str(k)}) for k in range(1, n + 1)
    ]


def test_lines_across_many_read_buffers_keep_their_numbers(wh, tmp_path, monkeypatch):
    # A tiny read buffer: every line straddles buffers, some are longer than one.
    monkeypatch.setattr(readers, "CHUNK_BYTES", 256)
    lines = _numbered(40, 0) + _numbered(5, 1000)
    path = _write(tmp_path, "a.jsonl", _jsonl(["", *lines]))  # line 1 is blank
    summary = factory.import_file(wh, str(path))
    assert summary.inserted == len(lines) and summary.rejected == 0
    got = wh.sql("SELECT instruction, origin_line FROM rows ORDER BY origin_line")
    assert got["origin_line"].to_list() == list(range(2, len(lines) + 2))
    assert [json.loads(line)["instruction"].strip() for line in lines] == got["instruction"].to_list()


@pytest.mark.parametrize("buffer", [256, 1 << 20])
def test_a_line_over_max_row_bytes_is_named_and_the_next_keep_their_numbers(
    wh, tmp_path, monkeypatch, buffer
):
    # With a small buffer the long line is cut off and the rest of it skipped; with a large
    # one the whole line is in the chunk. Either way one problem, and line 4 stays line 4.
    monkeypatch.setattr(readers, "CHUNK_BYTES", buffer)
    lines = [json.dumps(GOOD), _numbered(1, 5000)[0], '{"instruction": "caf\xe9"}', json.dumps(GOOD2)]
    data = _jsonl(lines[:2]) + b'{"instruction": "x\xed\xa0\x80", "output": "y"}\n' + _jsonl(lines[3:])
    path = _write(tmp_path, "a.jsonl", data)
    rejects = tmp_path / "rejects.csv"
    summary = factory.import_file(wh, str(path), on_error="skip", max_row_bytes=1000, rejects=str(rejects))
    assert summary.inserted == 2 and summary.rejected == 2
    with open(rejects, newline="") as handle:
        found = {r["origin"]: r["code"] for r in csv.DictReader(handle)}
    assert found == {f"{path}:2": "row_too_large", f"{path}:3": "bad_encoding"}
    assert wh.sql("SELECT origin_line FROM rows ORDER BY 1")["origin_line"].to_list() == [1, 4]


def test_a_stretch_of_blank_lines_longer_than_the_buffer_keeps_later_numbers(wh, tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK_BYTES", 64)
    data = _jsonl([json.dumps(GOOD), *[""] * 200, *["   "] * 100, json.dumps(GOOD2)])
    factory.import_file(wh, str(_write(tmp_path, "a.jsonl", data)))
    assert wh.sql("SELECT origin_line FROM rows ORDER BY 1")["origin_line"].to_list() == [1, 302]


@pytest.mark.parametrize("buffer", [64, 1 << 20])
def test_a_byte_order_mark_counts_toward_no_line(wh, tmp_path, monkeypatch, buffer):
    # The first line is exactly --max-row-bytes long, after a BOM: it is read, not cut off.
    monkeypatch.setattr(readers, "CHUNK_BYTES", buffer)
    first = json.dumps({"instruction": "z" * 100, "output": "o"})
    path = _write(tmp_path, "a.jsonl", b"\xef\xbb\xbf" + _jsonl([first, json.dumps(GOOD)]))
    summary = factory.import_file(wh, str(path), max_row_bytes=len(first))
    assert summary.inserted == 2 and summary.warnings == [
        f"{path}:1: removed a UTF-8 byte-order mark at the start of the file"
    ]
    rejects = tmp_path / "r.csv"
    too_long = factory.import_file(
        factory.init(tmp_path / "wh2"),
        str(path),
        max_row_bytes=len(first) - 1,
        on_error="skip",
        rejects=str(rejects),
    )
    assert too_long.inserted == 1 and "row_too_large" in rejects.read_text()


@pytest.mark.parametrize("buffer", [len(json.dumps(GOOD)) + 1, 1 << 20])
def test_a_byte_order_mark_inside_the_file_is_reported_wherever_the_buffer_starts(
    wh, tmp_path, monkeypatch, buffer
):
    # With the smaller buffer the second line starts a chunk, where Arrow would skip the BOM.
    monkeypatch.setattr(readers, "CHUNK_BYTES", buffer)
    path = _write(
        tmp_path, "a.jsonl", _jsonl([json.dumps(GOOD), b"\xef\xbb\xbf" + json.dumps(GOOD2).encode()])
    )
    rejects = tmp_path / "r.csv"
    summary = factory.import_file(wh, str(path), on_error="skip", rejects=str(rejects))
    assert summary.inserted == 1 and f"{path}:2,,bom," in rejects.read_text()


def test_encoding_names_are_read_as_codecs(wh, tmp_path):
    path = tmp_path / "u16.jsonl"
    path.write_bytes(_jsonl([json.dumps(GOOD, ensure_ascii=False)]).decode().encode("utf-16"))
    assert factory.import_file(wh, str(path), encoding="UTF16").inserted == 1
    assert (
        factory.import_file(
            wh, str(_write(tmp_path, "b.jsonl", _jsonl([json.dumps(GOOD2)]))), encoding="UTF_8"
        ).inserted
        == 1
    )
