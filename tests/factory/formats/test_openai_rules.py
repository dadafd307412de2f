"""The `openai` export against OpenAI's rules for chat fine-tuning files: our export passes, and
each rule catches a file that breaks it (one fixture per rule), naming the line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import factory
from factory.formats import openai_rules
from tests.conftest import alpaca, write_jsonl
from tests.factory.formats.test_import import OPENAI, SHAREGPT

GOOD = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello."}]}  # fmt: skip
USER = {"role": "user", "content": "Question?"}
ANSWER = {"role": "assistant", "content": "Answer."}
BROKEN = {  # rule -> one example that breaks it (and no other rule)
    "data_type": ["not", "an", "object"],
    "missing_messages_list": {"prompt": "Hi", "completion": "Hello."},
    "message_unrecognized_key": {"messages": [USER, {**ANSWER, "thoughts": "hidden"}]},
    "unrecognized_role": {"messages": [USER, {"role": "narrator", "content": "Later."}, ANSWER]},
    "missing_content": {"messages": [USER, {"role": "assistant", "content": ""}, ANSWER]},
    "example_missing_assistant_message": {"messages": [{"role": "system", "content": "S"}, USER]},
    "system_not_first": {"messages": [USER, {"role": "system", "content": "Late."}, ANSWER]},
    "bad_weight": {"messages": [USER, {**ANSWER, "weight": True}]},  # JSON true is not the integer 1
    "bad_name": {"messages": [{**USER, "name": {"first": "Ana"}}, ANSWER]},
    "tool_message_without_call": {"messages": [USER, {"role": "tool", "content": "42"}, ANSWER]},
    "ends_without_assistant": {"messages": [USER, ANSWER, USER]},
}


def check(tmp_path, examples, model=openai_rules.DEFAULT_MODEL):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return openai_rules.check_file(path, model)


def test_our_openai_export_passes_the_rules(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(30))))
    (tmp_path / "s.json").write_text(json.dumps(SHAREGPT))
    factory.import_file(wh, str(tmp_path / "s.json"))
    factory.import_file(wh, str(write_jsonl(tmp_path / "o.jsonl", OPENAI)))
    wh.create_snapshot("all")
    result = factory.export(wh, "all", tmp_path / "out", "openai", eval_split=0.2)
    for split, found in result["openai_check"].items():
        lines = (tmp_path / "out" / result["files"][split]).read_text().splitlines()
        # we keep no tool-call ids, so a conversation with a tool turn is one OpenAI would refuse: said so
        tools = [n for n, line in enumerate(lines, 1) if '"role":"tool"' in line]
        assert found["errors"] == ({"tool_message_without_call": len(tools)} if tools else {}), (split, found)
        assert found["lines"].get("tool_message_without_call", []) == tools[:5] and found["warnings"] == {}
        assert found["examples"] == result["counts"][split] and found["encoding"] == "o200k_base"
        assert 0 < found["tokens_max"] < found["tokens_total"]
    assert (
        json.loads((tmp_path / "out" / "export.json").read_text())["openai_check"]["train"]["token_limit"]
        == 65_536
    )


def test_tokens_are_counted_as_the_cookbook_counts_them():
    # 3 to prime the reply; per message 3 + "user" (1) + "Hello, world!" (Hello , world ! = 4) in o200k_base
    assert openai_rules.count_tokens([{"role": "user", "content": "Hello, world!"}]) == 11
    named = [{"role": "user", "content": "Hello, world!", "name": "ana"}]
    assert openai_rules.count_tokens(named) == 11 + 1 + 1  # the name's token and the name's extra one


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_catches_its_fixture_on_its_line(rule, tmp_path):
    report = check(tmp_path, [GOOD] * 10 + [BROKEN[rule]])
    found = report.errors | report.warnings
    assert set(found) == {rule} and report.lines[rule] == [11]
    assert report.ok is (rule in openai_rules.WARNINGS)


def test_hostile_lines_are_reported_not_crashed_on(tmp_path):
    path = tmp_path / "hostile.jsonl"
    lines = [json.dumps(GOOD).encode()] * 10 + [
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',  # Latin-1, not UTF-8
        b"[" * 100_000,  # nested past the parser's depth
        json.dumps({"messages": [{"role": ["user"], "content": "Q"}, ANSWER]}).encode(),
        json.dumps(
            {"messages": [USER, {**ANSWER, "content": "a <|endoftext|> b " + "x" * 1_500_000}]}
        ).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = openai_rules.check_file(path)
    assert report.lines["data_type"] == [11, 12] and report.lines["unrecognized_role"] == [13]
    assert (
        report.tokens_max > 1_500_000 // 8
    )  # a special-token string is counted as text, a long value in pieces
    assert openai_rules.check_file(path, "gpt-4o-2024-08-06").warnings == {"over_token_limit": 1}


def test_tool_calls_and_content_parts_that_openai_takes_pass(tmp_path):
    call = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                 "function": {"name": "add", "arguments": '{"a": 1}'}}]}  # fmt: skip
    tools = {"messages": [USER, call, {"role": "tool", "tool_call_id": "c1", "content": "2"}, ANSWER]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe"}]}, ANSWER]}
    report = check(tmp_path, [GOOD] * 10 + [tools, parts])
    assert report.ok and not report.warnings


def test_each_model_counts_with_its_own_encoding(tmp_path):
    chinese = {"messages": [USER, {"role": "assistant", "content": "知识就是力量。" * 500}]}
    o200k = check(tmp_path, [chinese] * 10, model="gpt-4o-mini-2024-07-18").tokens_max
    cl100k = check(tmp_path, [chinese] * 10, model="gpt-3.5-turbo-0613")
    assert cl100k.encoding == "cl100k_base" and cl100k.tokens_max > o200k * 1.3
    assert cl100k.warnings == {}  # under 4,096 in both
    longer = {"messages": [USER, {"role": "assistant", "content": "知识就是力量。" * 1200}]}
    assert check(tmp_path, [longer] * 10, model="gpt-3.5-turbo-0613").warnings == {"over_token_limit": 10}


def test_missing_keys_and_bad_json_and_too_few_examples(tmp_path):
    report = check(tmp_path, [GOOD] * 3 + [{"messages": [USER, {"role": "assistant"}]}])
    assert report.errors == {"message_missing_key": 1, "missing_content": 1, "too_few_examples": 1}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"messages": [\n')
    assert openai_rules.check_file(path).lines["data_type"] == [2]


def test_examples_over_the_models_token_limit_are_flagged(tmp_path):
    long = {"messages": [USER, {"role": "assistant", "content": " word" * 5000}]}
    small = check(tmp_path, [GOOD] * 10 + [long], model="gpt-3.5-turbo-0613")  # 4,096 tokens
    assert small.warnings == {"over_token_limit": 1} and small.tokens_max > 5000 and small.ok
    assert check(tmp_path, [GOOD] * 10 + [long]).warnings == {}  # gpt-4o-mini: 65,536
    with pytest.raises(ValueError, match="unknown OpenAI model"):
        check(tmp_path, [GOOD], model="gpt-2")


def test_the_cli_says_whether_openai_would_take_the_file(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", alpaca(4))))
    wh.create_snapshot("few")
    wh.close()
    done = subprocess.run([sys.executable, "-m", "factory.cli", "export", "few", "--format", "openai", "--out",
                           str(tmp_path / "out"), "--warehouse", str(tmp_path / "wh")],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "OpenAI would refuse this file" in done.stdout and "too_few_examples" in done.stdout
