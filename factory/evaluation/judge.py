"""The MT-Bench single-answer judge: a teacher rates each answer 1-10 (`EvalSettings.judge`).

The prompt is MT-Bench's; the rating is read from "[[N]]". The judge is any teacher
spec, asked through the call cache under the evaluation run, and closed when judging
fails so every answer it paid for stays recorded.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from factory.store.warehouse import Warehouse

JUDGE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
    'you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for '
    'example: "Rating: [[5]]".\n\n[Question]\n{question}\n\n[The Start of Assistant\'s Answer]\n{answer}\n'
    "[The End of Assistant's Answer]"
)
RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


def ratings(
    wh: Warehouse, run_id: str, teacher_spec: str, questions: list[str], answers: list[str]
) -> list[float | None]:
    """The judge's 1-10 rating of each answer (None where it gave none), asked through the call cache."""
    from factory.teachers.teacher import Sampling, TeacherConfig, ask, open_teacher

    with open_teacher(wh, run_id, TeacherConfig(teacher=teacher_spec)) as teacher:  # closed on failure too
        verdicts = ask(teacher, [JUDGE.format(question=q, answer=a) for q, a in zip(questions, answers, strict=True)],
                       Sampling(temperature=0.0, max_tokens=512))  # fmt: skip
    found = [RATING.search(v[0] or "") for v in verdicts]
    return [float(m.group(1)) if m else None for m in found]
