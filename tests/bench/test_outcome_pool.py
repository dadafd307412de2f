"""The outcome bench's pool is what its docstring says, before any training run reads it: the junk
shares, no good row sharing a task with the test set, and an oracle that answers every task right."""

from __future__ import annotations

from collections import Counter

import pytest

from bench import outcome_pool
from factory.evaluation import ifeval


@pytest.fixture(scope="module")
def tests_and_pool():
    tests = outcome_pool.eval_set()
    return tests, outcome_pool.pool(2000, 0, tests)


def test_the_pool_has_the_fixed_mix_of_good_rows_and_junk(tests_and_pool):
    _, rows = tests_and_pool
    kinds = Counter(r["kind"] for r in rows)
    assert len(rows) == 2000
    for kind, share in outcome_pool.JUNK_SHARES.items():
        assert kinds[kind] == round(2000 * share), kind
        assert 0.03 <= share <= 0.10
    assert kinds["good"] / len(rows) >= 0.60
    domains = Counter(r["domain"] for r in rows if r["kind"] == "good")
    assert min(domains, key=domains.get) == "formatting" and len(domains) == 4


def test_no_good_row_shares_a_task_or_an_instruction_with_the_test_set(tests_and_pool):
    tests, rows = tests_and_pool
    assert len({t.key for t in tests}) == len(tests) == 160
    instructions = {t.instruction for t in tests}
    good = [r for r in rows if r["kind"] == "good"]
    assert not any(r["instruction"] in instructions for r in good)
    copied = [r for r in rows if r["kind"] == "contaminated"]
    assert copied and all(r["instruction"] in instructions for r in copied)


def test_the_oracle_teacher_answers_every_task_and_formatting_rows_state_checkable_constraints(
    tests_and_pool,
):
    tests, rows = tests_and_pool
    for r in [r for r in rows if r["kind"] == "good"] + [
        {"instruction": t.instruction, "output": t.answer} for t in tests
    ]:
        assert outcome_pool.oracle(r["instruction"]) == r["output"], r
    for t in tests:
        if t.domain == "formatting":
            score = ifeval.score(t.instruction, t.answer)
            assert score is not None and score["followed"] == 1.0, t
    assert outcome_pool.oracle("Write a poem about the sea") == "I do not know this kind of task."
