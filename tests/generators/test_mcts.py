"""IDEA-MCTS on a real local HTTP server and the tiny model: tree invariants, stored trees, continued search."""

from __future__ import annotations

import json
import re

import factory
from generators import mcts
from tests.conftest import write_jsonl
from tests.servers import ScriptedServer

SEEDS = [
    {"instruction": "Write a poem about rivers", "input": "", "output": "x"},
    {"instruction": "Explain how vaccines work", "input": "", "output": "x"},
]


def teacher(prompt: str) -> str:
    if prompt.startswith("Here is an instruction"):
        return "1. Require the answer to cite a named historical event\n2. Ask for a comparison table"
    if prompt.startswith("Rate this instruction"):
        instruction = prompt.split("Instruction: ")[1].split("\n")[0]
        return f"Quality: 7\nComplexity: {min(10, len(instruction.split()) // 2)}"
    if "#Given Prompt#:" in prompt:
        given = prompt.split("#Given Prompt#:\n")[1].split("\n\n#Rewritten")[0]
        method = re.search(
            r"Keep any non-text parts such as tables and code\. (.*?) The rewritten", prompt, re.S
        )[1]
        return f"{given}, and {method.split()[0].lower()} {len(given.split())}"
    return f"Answer: {prompt[:40]}"


def test_mcts_search_invariants_and_continuation(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "s.jsonl", SEEDS)))
    wh.create_snapshot("seeds")
    with ScriptedServer(teacher) as server:
        values = {"on": "seeds", "rollouts": 3, "expand": 2, "max_depth": 3, "diversity": "none",
                  "teacher.teacher": f"openai:t@{server.url}"}  # fmt: skip
        summary = factory.generate(wh, "mcts", **values)
        nodes = wh.sql("SELECT * FROM mcts_nodes")
        for tree in nodes["tree"].unique():
            part = nodes.filter(nodes["tree"] == tree)
            by_node = {r["node"]: r for r in part.iter_rows(named=True)}
            root = [r for r in by_node.values() if r["parent"] is None]
            assert len(root) == 1 and root[0]["visits"] == 3  # every rollout backs up through the root
            for r in by_node.values():
                children = [c for c in by_node.values() if c["parent"] == r["node"]]
                assert r["visits"] >= sum(c["visits"] for c in children)
                assert r["depth"] <= 3 and (
                    r["parent"] is None or by_node[r["parent"]]["depth"] == r["depth"] - 1
                )
                assert r["reward"] is not None and 0 <= r["reward"] <= 1
                if r["visits"]:
                    assert 0 <= r["value"] / r["visits"] <= 1
            actions = set(part["action"].drop_nulls())
            assert actions & set(mcts.DEPTH_METHODS) or any(
                a.startswith("Require") or a.startswith("Ask") for a in actions
            )
        rows = wh.sql(
            "SELECT instruction, output, parent_ids, generator_params FROM rows WHERE generator = 'mcts'"
        )
        assert rows.height == summary.accepted == 2  # best 1 per tree
        for row in rows.iter_rows(named=True):
            params = json.loads(row["generator_params"])
            assert len(params["actions"]) == params["depth"] >= 1 and row["output"].startswith("Answer:")
            seed = wh.sql("SELECT instruction FROM rows WHERE id = ?", [row["parent_ids"][0]])["instruction"][
                0
            ]
            assert row["instruction"].startswith(seed)  # every evolution here extends the instruction
        asked = server.requests
        again = factory.generate(wh, "mcts", **(values | {"rollouts": 2}))  # continues the stored trees
        assert server.requests > asked and again.job_id != summary.job_id
    roots = wh.sql("SELECT visits FROM mcts_nodes WHERE parent IS NULL")["visits"].to_list()
    assert roots == [5, 5]
    config = wh.sql("SELECT config FROM jobs WHERE plugin = 'mcts'")["config"][0]
    assert "127.0.0.1" not in config


def test_uct_prefers_unvisited_then_value():
    parent = mcts.Node("p", None, 0, None, "x", visits=10)
    unvisited = mcts.Node("a", "p", 1, "deepen", "y")
    good = mcts.Node("b", "p", 1, "deepen", "z", visits=5, value=4.0)
    poor = mcts.Node("c", "p", 1, "deepen", "w", visits=5, value=1.0)
    assert mcts.uct(unvisited, parent, 1.4) == float("inf")
    assert mcts.uct(good, parent, 1.4) > mcts.uct(poor, parent, 1.4)
    assert mcts.ratings("Quality: 8\nComplexity: 12") == {"quality": 0.8, "complexity": 1.0}


def test_mcts_on_the_tiny_model(wh, tmp_path, tiny_model):
    factory.import_file(wh, str(write_jsonl(tmp_path / "s.jsonl", SEEDS)))
    wh.create_snapshot("seeds")
    small = {"max_tokens": 16}
    summary = factory.generate(
        wh, "mcts", on="seeds", rollouts=2, expand=2, max_depth=2, task_actions=1, sampling=small,
        judge_sampling=small, answer_sampling=small, **{"teacher.teacher": f"hf:{tiny_model}"},
    )  # fmt: skip
    assert summary.teacher_stats["calls"] > 0
    assert wh.sql(f"SELECT status FROM jobs WHERE id = '{summary.job_id}'")["status"][0] == "succeeded"
    roots = wh.sql("SELECT visits FROM mcts_nodes WHERE parent IS NULL")["visits"].to_list()
    assert roots == [2, 2]
