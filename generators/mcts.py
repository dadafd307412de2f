"""The `mcts` generator: IDEA-MCTS, instruction synthesis as a Monte Carlo tree search.

Each seed instruction is a root. An action is an evolution operation: the general
Evol-Instruct ones plus task-specific ones the teacher proposes for that root.
A rollout selects a leaf by UCT (value/visits + c * sqrt(ln N / n), unvisited
children first), expands it with several sampled actions (the teacher rewrites
the instruction), simulates from the first new child by random evolutions until
a terminal state (reward at or above the value threshold, or the depth limit),
and backs the terminal reward up to the root. The reward is quality + diversity
+ complexity (weights configurable), each from a pluggable evaluator: the teacher
as judge for quality and complexity (or word count for complexity), and one
minus the highest cosine to the pool of instructions for diversity (bundled
MiniLM). Rollouts run for all roots together, so every step is one batch of
teacher calls.

The trees live in the `mcts_nodes` table (node, parent, action, instruction,
reward, visits, value), written with the rows in one commit: SQL can inspect a
search, and a rerun with the same settings continues it. The best nodes of each
tree (by mean value) become rows, answered by the teacher, with the action path
in their lineage.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from factory.plugins import GeneratorPlugin
from factory.runners.generation import (
    GenerationSummary,
    Output,
    make_row,
    run_generator,
    template_hash,
)
from factory.store import lake
from factory.store.schema import TABLES
from factory.store.warehouse import Warehouse
from factory.teachers.teacher import Sampling, Teacher, TeacherConfig, ask
from generators.evol_instruct import DEPTH_INTRO, DEPTH_METHODS

PROPOSE = (
    "Here is an instruction for a language model:\n\n{instruction}\n\nPropose {n} different ways to make it "
    "more challenging that are specific to its task (not generic advice). Write one per line, each as an "
    "imperative sentence, and nothing else."
)
JUDGE = (
    "Rate this instruction for a language model.\n\nInstruction: {instruction}\n\nQuality: is it clear, "
    "self-contained and answerable? Complexity: how much knowledge, reasoning and constraint does it demand?\n"
    "Answer with two lines exactly:\nQuality: <1-10>\nComplexity: <1-10>"
)
RATING = re.compile(r"(quality|complexity)\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


class MctsConfig(BaseModel):
    on: str = Field(description="snapshot whose instructions are the roots")
    limit: int | None = Field(None, gt=0, description="use at most this many roots")
    rollouts: int = Field(4, ge=1, description="rollouts per root in this run")
    expand: int = Field(2, ge=1, le=8, description="actions sampled when a node is expanded")
    c_uct: float = Field(1.4, ge=0, description="UCT exploration constant")
    max_depth: int = Field(3, ge=1, le=10, description="depth limit of a tree (and of a simulation)")
    value_threshold: float = Field(0.8, ge=0, le=1, description="a node this good is terminal")
    task_actions: int = Field(
        2, ge=0, le=8, description="task-specific actions the teacher proposes per root"
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: {"quality": 1 / 3, "diversity": 1 / 3, "complexity": 1 / 3},
        description="reward = sum of weight x evaluator score",
    )
    complexity: Literal["teacher", "length"] = Field("teacher", description="complexity evaluator")
    diversity: Literal["embedding", "none"] = Field("embedding", description="diversity evaluator")
    best: int = Field(1, ge=1, description="best nodes per tree that become rows")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=256))
    judge_sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=32))
    answer_sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=512))


@dataclass
class Node:
    node: str
    parent: str | None
    depth: int
    action: str | None
    instruction: str
    reward: float | None = None
    visits: int = 0
    value: float = 0.0
    children: list[str] = field(default_factory=list)


@dataclass
class Tree:
    tree: str
    root_id: str
    nodes: dict[str, Node]
    actions: list[str]
    rng: random.Random

    @property
    def root(self) -> Node:
        return next(n for n in self.nodes.values() if n.parent is None)


def node_id(tree: str, parent: str | None, action: str | None, instruction: str) -> str:
    return hashlib.sha256("\x1e".join((tree, parent or "", action or "", instruction)).encode()).hexdigest()[
        :24
    ]


def tree_id(root_id: str, cfg: MctsConfig) -> str:
    settings = cfg.model_dump(mode="json", exclude={"on", "limit", "rollouts", "teacher", "best"})
    settings["teacher"] = cfg.teacher.teacher.split("@")[0]
    return hashlib.sha256(f"{root_id}\x1e{json.dumps(settings, sort_keys=True)}".encode()).hexdigest()[:24]


def uct(child: Node, parent: Node, c: float) -> float:
    if child.visits == 0:
        return math.inf
    return child.value / child.visits + c * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)


def select(tree: Tree, cfg: MctsConfig) -> Node:
    """From the root, follow the best UCT child while the node has children and is not terminal."""
    node = tree.root
    while node.children and not terminal(node, cfg):
        node = max((tree.nodes[c] for c in node.children), key=lambda child: uct(child, node, cfg.c_uct))
    return node


def terminal(node: Node, cfg: MctsConfig) -> bool:
    return node.depth >= cfg.max_depth or (node.reward is not None and node.reward >= cfg.value_threshold)


def rewrite_prompt(instruction: str, action: str) -> str:
    method = DEPTH_METHODS.get(action, action)  # a general operation by name, or a proposed one as text
    return f"{DEPTH_INTRO.format(method=method)}#Given Prompt#:\n{instruction}\n\n#Rewritten Prompt#:\n"


def ratings(text: str | None) -> dict[str, float]:
    found = {k.lower(): float(v) for k, v in RATING.findall(text or "")}
    return {k: min(max(v, 0.0), 10.0) / 10 for k, v in found.items()}


class Search:
    """All trees of one run, advanced together so each step is one batch of teacher calls."""

    def __init__(self, trees: list[Tree], pool: list[str], cfg: MctsConfig, teacher: Teacher) -> None:
        self.trees, self.cfg, self.teacher = trees, cfg, teacher
        self.pool = pool
        self.pool_vectors: np.ndarray | None = None
        self.evaluators: dict[str, Callable[[list[str]], list[float]]] = {
            "quality": lambda texts: [r.get("quality", 0.0) for r in self._judged(texts)],
            "complexity": (
                (lambda texts: [r.get("complexity", 0.0) for r in self._judged(texts)])
                if cfg.complexity == "teacher"
                else (lambda texts: [min(len(t.split()) / 60, 1.0) for t in texts])
            ),
            "diversity": self._diversity
            if cfg.diversity == "embedding"
            else (lambda texts: [0.0] * len(texts)),
        }
        self._judgements: dict[str, dict[str, float]] = {}

    def _ask(self, prompts: list[str], sampling: Sampling) -> list[str]:
        return [samples[0] or "" for samples in ask(self.teacher, prompts, sampling)]

    def _judged(self, texts: list[str]) -> list[dict[str, float]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._judgements]
        for text, answer in zip(missing, self._ask([JUDGE.format(instruction=t) for t in missing], self.cfg.judge_sampling), strict=True):  # fmt: skip
            self._judgements[text] = ratings(answer)
        return [self._judgements[t] for t in texts]

    def _diversity(self, texts: list[str]) -> list[float]:
        from factory.models.embeddings import encode

        if self.pool_vectors is None:
            self.pool_vectors = encode(self.pool)
        vectors = encode(texts)
        nearest = (vectors @ self.pool_vectors.T).max(axis=1) if len(self.pool) else np.zeros(len(texts))
        return [float(1 - s) for s in nearest]

    def rewards(self, texts: list[str]) -> list[float]:
        scores = {name: self.evaluators[name](texts) for name in self.cfg.weights}
        return [
            round(sum(w * scores[name][k] for name, w in self.cfg.weights.items()), 6)
            for k in range(len(texts))
        ]

    def propose_actions(self) -> None:
        """Task-specific actions for roots that have none yet (general ones always apply)."""
        need = [t for t in self.trees if len(t.actions) == len(DEPTH_METHODS) and self.cfg.task_actions]
        answers = self._ask([PROPOSE.format(instruction=t.root.instruction, n=self.cfg.task_actions) for t in need],
                            self.cfg.sampling)  # fmt: skip
        for tree, answer in zip(need, answers, strict=True):
            lines = [re.sub(r"^[\s\-*\d.)]+", "", line).strip() for line in answer.splitlines()]
            tree.actions += [line for line in lines if len(line.split()) >= 3][: self.cfg.task_actions]

    def rollout(self) -> None:
        leaves = [select(t, self.cfg) for t in self.trees]
        # expansion: every non-terminal leaf gets `expand` children
        jobs = []
        for tree, leaf in zip(self.trees, leaves, strict=True):
            if not terminal(leaf, self.cfg):
                for action in tree.rng.sample(tree.actions, min(self.cfg.expand, len(tree.actions))):
                    jobs.append((tree, leaf, action))
        texts = self._ask([rewrite_prompt(leaf.instruction, a) for _, leaf, a in jobs], self.cfg.sampling)
        made: dict[str, list[Node]] = {}
        for (tree, leaf, action), text in zip(jobs, texts, strict=True):
            if not text or text == leaf.instruction:
                continue
            child = Node(node_id(tree.tree, leaf.node, action, text), leaf.node, leaf.depth + 1, action, text)
            if child.node not in tree.nodes:
                tree.nodes[child.node] = child
                leaf.children.append(child.node)
            made.setdefault(tree.tree, []).append(tree.nodes[child.node])
        fresh = [n for nodes in made.values() for n in nodes if n.reward is None]
        for node, reward in zip(fresh, self.rewards([n.instruction for n in fresh]), strict=True):
            node.reward = reward
        # simulation: random evolutions from the first new child (or the leaf) to a terminal state
        start = {t.tree: (made.get(t.tree) or [leaf])[0] for t, leaf in zip(self.trees, leaves, strict=True)}
        state = {
            t.tree: (start[t.tree].instruction, start[t.tree].depth, start[t.tree].reward or 0.0)
            for t in self.trees
        }
        while True:
            moving = [
                t
                for t in self.trees
                if state[t.tree][1] < self.cfg.max_depth and state[t.tree][2] < self.cfg.value_threshold
            ]
            if not moving:
                break
            actions = [t.rng.choice(t.actions) for t in moving]
            texts = self._ask(
                [rewrite_prompt(state[t.tree][0], a) for t, a in zip(moving, actions, strict=True)],
                self.cfg.sampling,
            )
            rewards = self.rewards([text or state[t.tree][0] for t, text in zip(moving, texts, strict=True)])
            for t, text, reward in zip(moving, texts, rewards, strict=True):
                state[t.tree] = (text or state[t.tree][0], state[t.tree][1] + 1, reward)
        # backpropagation of the terminal reward from the start node to the root
        for tree in self.trees:
            node: Node | None = start[tree.tree]
            while node is not None:
                node.visits += 1
                node.value += state[tree.tree][2]
                node = tree.nodes[node.parent] if node.parent else None


def _load(wh: Warehouse, roots: pl.DataFrame, cfg: MctsConfig) -> list[Tree]:
    trees = []
    ids = [tree_id(r, cfg) for r in roots["id"]]
    stored = wh.sql("SELECT * FROM mcts_nodes WHERE list_contains($trees, tree)", {"trees": ids})
    for (root_id, instruction), tid in zip(roots.select("id", "instruction").iter_rows(), ids, strict=True):
        nodes: dict[str, Node] = {}
        for r in stored.filter(pl.col("tree") == tid).sort("depth").iter_rows(named=True):
            nodes[r["node"]] = Node(r["node"], r["parent"], r["depth"], r["action"], r["instruction"],
                                    r["reward"], r["visits"], r["value"])  # fmt: skip
        for n in nodes.values():
            if n.parent in nodes:
                nodes[n.parent].children.append(n.node)
        if not nodes:
            root = Node(node_id(tid, None, None, instruction), None, 0, None, instruction)
            nodes[root.node] = root
        actions = list(DEPTH_METHODS)
        done = (
            stored.filter((pl.col("tree") == tid) & pl.col("action").is_not_null())["action"]
            .unique()
            .to_list()
        )
        actions += sorted(
            a for a in done if a not in DEPTH_METHODS
        )  # task actions proposed in an earlier run
        visits = sum(n.visits for n in nodes.values())
        trees.append(Tree(tid, root_id, nodes, actions, random.Random(f"{tid}:{visits}:{cfg.teacher.seed}")))
    return trees


def _tree_frame(trees: list[Tree], job: str) -> pl.DataFrame:
    records = [
        {"tree": t.tree, "node": n.node, "parent": n.parent, "root_id": t.root_id, "depth": n.depth,
         "action": n.action, "instruction": n.instruction, "reward": n.reward, "visits": n.visits,
         "value": n.value, "job_id": job}
        for t in trees for n in t.nodes.values()
    ]  # fmt: skip
    columns = [c for c in TABLES["mcts_nodes"] if c != "updated_at"]
    return pl.DataFrame(records, schema_overrides={"reward": pl.Float64, "value": pl.Float64}).select(columns)


def run(wh: Warehouse, config: MctsConfig, progress: bool = False) -> GenerationSummary:
    roots = wh.sql(f"SELECT id, instruction FROM {wh.snapshot_sql(config.on)} ORDER BY id")
    pool = roots["instruction"].to_list()
    roots = roots.head(config.limit) if config.limit else roots
    trees = _load(wh, roots, config)
    holder: dict[str, Any] = {}

    def produce(teacher: Teacher, out: Output) -> None:
        search = Search(trees, pool, config, teacher)
        if any(t.root.reward is None for t in trees):
            for tree, reward in zip(trees, search.rewards([t.root.instruction for t in trees]), strict=True):
                tree.root.reward = reward
        search.propose_actions()
        for _ in range(config.rollouts):
            search.rollout()
        best = []
        for tree in trees:
            ranked = sorted((n for n in tree.nodes.values() if n.parent and n.visits),
                            key=lambda n: (-n.value / n.visits, n.node))  # fmt: skip
            best += [(tree, n) for n in ranked[: config.best]]
        answers = search._ask([n.instruction for _, n in best], config.answer_sampling)
        template = template_hash("mcts", DEPTH_INTRO, JUDGE, PROPOSE)
        for (tree, node), answer in zip(best, answers, strict=True):
            path, walk = [], node
            while walk.parent:
                path.append(walk.action)
                walk = tree.nodes[walk.parent]
            row = make_row("mcts", teacher.model, node.instruction, output=answer, parents=[tree.root_id],
                           params={"tree": tree.tree, "node": node.node, "depth": node.depth, "actions": path[::-1],
                                   "reward": node.reward, "visits": node.visits, "mean_value": node.value / node.visits},
                           template=template)  # fmt: skip
            if answer:
                out.rows.append(row)
            else:
                out.reject(row, "empty_output")
        holder["job"] = teacher.cache.job_id

    def store_trees(lk: lake.Lake) -> None:
        frame = _tree_frame(trees, holder.get("job", ""))
        with lk.registered("staged_nodes", frame):
            lk.execute(
                "DELETE FROM mcts_nodes WHERE list_contains($trees, tree)", {"trees": [t.tree for t in trees]}
            )
            columns = ", ".join(frame.columns)
            lk.execute(
                f"INSERT INTO mcts_nodes ({columns}, updated_at) SELECT {columns}, now() FROM staged_nodes"
            )

    return run_generator(wh, "mcts", config, config.teacher, produce, progress, also=store_trees)


plugin = GeneratorPlugin(
    name="mcts",
    config=MctsConfig,
    run=run,
    summary="IDEA-MCTS: UCT tree search over evolution actions; reward = quality + diversity + complexity",
)
