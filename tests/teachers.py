"""A scripted teacher that answers every prompt a shipped recipe sends, in the shape each asks for.

Served by `tests.servers.ScriptedServer` (a real OpenAI-compatible HTTP server on
127.0.0.1), it stands in for a real model in the recipe tests: task lists for
Self-Instruct, rewrites and equality checks for Evol-Instruct, proposals and ratings for
IDEA-MCTS, 1-10 ratings for RLAIF pairs, 1-5 ratings for the AlpaGasus judge, and a
plain answer to anything else. Answers depend on the prompt, so different prompts get
different answers (dedup has something real to do) and reruns get the same ones.
"""

from __future__ import annotations

import hashlib
import re

from generators import self_instruct as si

TOPICS = ["tide pools", "sourdough bread", "bicycle gears", "solar panels", "chess openings", "bee colonies",
          "river deltas", "paper making", "glass blowing", "city parks", "violin strings", "coral reefs"]  # fmt: skip


def _pick(prompt: str, k: int = 0) -> str:
    digest = hashlib.sha256(f"{k}:{prompt}".encode()).digest()
    return TOPICS[digest[0] % len(TOPICS)]


def recipe_teacher(prompt: str) -> str:
    if prompt.startswith(si.TASKS_HEADER):
        first, second, third = (_pick(prompt, k) for k in range(3))
        return (
            f" Explain how {first} work to a ten-year-old.\n"
            f"10. Write a short guide to caring for {second}.\n"
            f"11. Compare {second} and {third} in three sentences.\n"
            f"12. List four common mistakes people make with {third}."
        )
    if prompt.startswith(si.IS_CLASSIFICATION_HEADER):
        return " No"
    if prompt.startswith(si.INPUT_FIRST_HEADER) or prompt.startswith(si.OUTPUT_FIRST_HEADER):
        topic = _pick(prompt)
        return f"Output: A careful, plain answer about {topic}, in two sentences with one example."
    if "#Given Prompt#" in prompt:
        given = prompt.split("#Given Prompt#:\n")[1].split("\n\n#")[0].strip()
        return f"{given} Support each point with an example about {_pick(prompt)}."
    if "First instruction:" in prompt:
        return " Not Equal"
    if prompt.startswith("Here is an instruction"):
        return f"1. Ask for an example about {_pick(prompt)}\n2. Ask for a numbered list"
    if prompt.startswith("Rate this instruction"):
        instruction = prompt.split("Instruction: ")[1].split("\n")[0]
        return f"Quality: 8\nComplexity: {min(10, 2 + len(instruction.split()) // 3)}"
    if prompt.startswith("Rate each response"):
        count = len(re.findall(r"^### Response \d+:", prompt, flags=re.M))
        return "\n".join(f"Response {j}: {9 - 2 * (j - 1) % 8}" for j in range(1, count + 1))
    if "please rate according to" in prompt.lower():  # the AlpaGasus judge
        return "4.8\nAccurate and complete."
    return f"Here is a clear answer. It concerns {_pick(prompt)} and {_pick(prompt, 1)}; see the steps above."
