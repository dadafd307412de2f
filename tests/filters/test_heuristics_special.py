"""Heuristics on responses that are nothing (or nothing but end markers), and reasons that stay one line.

Rows go in as a teacher would write them (generated rows, not imported: the importer may strip
trailing markers) and are judged by the real filter runner, verdicts read back from the warehouse.
"""

from __future__ import annotations

import polars as pl

from factory.runners.filtering import run_filter
from factory.runners.generation import make_row

# output -> the reason heuristics must give it ("ok": kept)
ROWS = {
    "<|endoftext|>": 'special_tokens_only "<|endoftext|>"',  # an OpenAI fine-tuning file's completion
    "</s>\n": 'special_tokens_only "</s>"',
    "  <|im_end|> ": 'special_tokens_only "<|im_end|>"',
    "</s>\n</s>": 'special_tokens_only "</s>\\n</s>"',  # quoted with the newline escaped
    "<|eot_id|><|end_of_text|>": 'special_tokens_only "<|eot_id|><|end_of_text|>"',
    "": "empty_output",
    " \n\t ": "empty_output",
    # a real answer with a marker left at its end, or a marker quoted in prose: kept
    "The capital of France is Paris.</s>": "ok",
    "Llama 2 ends a turn with </s>.": "ok",
    "Paris is the capital of France.": "ok",
    "Steps:\n1. Boil water.\n2. Add the pasta.": "ok",
    # the quoted tail of a cut-off answer holds a newline: escaped, the reason stays one line
    "Here is the code:\n```python\nprint(1)\nx = 2": "truncated_output ython\\nprint(1)\\nx = 2",  # its last 20 characters
    "Go on:\tfirst,": "truncated_output Go on:\\tfirst,",
    "I cannot\nhelp with that.": 'refusal "i cannot\\nhelp with"',  # a configured phrase with a newline
}


def _add(wh, outputs: list[str]) -> None:
    rows = [
        make_row("distill", "hf:tiny", f"Answer question number {k} please", output=o)
        for k, o in enumerate(outputs)
    ]
    frame = pl.DataFrame(
        rows, schema_overrides={"parent_ids": pl.List(pl.String), "tags": pl.List(pl.String)}
    )
    wh.add_rows([frame], "generated")


def _verdicts(wh, run_id: str) -> dict[str, tuple[bool, str]]:
    frame = wh.sql(
        "SELECT r.output, v.keep, v.reason FROM verdicts v JOIN rows r USING (id) WHERE run_id = ?", [run_id]
    )
    return {o: (keep, reason) for o, keep, reason in frame.iter_rows()}


def test_empty_and_marker_only_responses_have_their_own_reasons_and_reasons_are_one_line(wh):
    _add(wh, list(ROWS))
    refusals = ["i cannot\nhelp with", "as an ai language model"]
    summary = run_filter(wh, "heuristics", {"refusals": refusals})
    seen = _verdicts(wh, summary.run_id)
    assert {o: reason for o, (_, reason) in seen.items()} == ROWS
    assert all(keep == (reason == "ok") for keep, reason in seen.values())
    for _, reason in seen.values():  # no raw line break, tab or other control character
        assert reason.isprintable(), repr(reason)
    assert summary.reasons == {
        "special_tokens_only": 5,
        "truncated_output": 2,
        "empty_output": 2,
        "refusal": 1,
    }
    assert summary.kept == 4


def test_marker_only_comes_before_every_other_check(wh):
    """A marker-only response would fail other checks too (echo, word counts): its reason is its own."""
    _add(wh, ["<|endoftext|>", "</s>"])
    summary = run_filter(wh, "heuristics", {"min_output_words": 3, "echo": True, "min_instruction_words": 50})
    assert sorted(reason for _, reason in _verdicts(wh, summary.run_id).values()) == [
        'special_tokens_only "</s>"',
        'special_tokens_only "<|endoftext|>"',
    ]
    assert summary.dropped == 2 and summary.reasons == {"special_tokens_only": 2}
