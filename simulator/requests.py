"""What a chat request asks, read back from the product's prompt layout (tasks.teacher.prompts).

The simulated teacher answers a question it recognises; this is the inverse of cot_messages and
eval_messages, kept here because only the simulator needs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks.teacher.prompts import ANSWER_TYPES, cot_system_prompt, eval_system_prompt


@dataclass(frozen=True)
class PromptRequest:
    """What a request built by tasks.teacher.prompts asks: the inverse of cot_messages / eval_messages."""

    kind: str  # cot | evaluation
    answer_type: str | None  # None when the system prompt is not one of ours
    question: str
    cot: str | None  # the chain of thought judged (evaluation requests)


_SYSTEMS = {cot_system_prompt(t): (t, "cot") for t in ANSWER_TYPES} | {
    eval_system_prompt(t): (t, "evaluation") for t in ANSWER_TYPES
}
_JUDGED = re.compile(r"Q: (?P<question>.*?)\nProposed answer: (?P<cot>.*)\nEvaluation:", re.DOTALL)
_ASKED = re.compile(r"Q: (?P<question>.*)\nA:", re.DOTALL)


def read_request(messages: list[dict]) -> PromptRequest | None:
    """The question (and judged CoT) a chat request carries, or None if it is not in our layout."""
    users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    if not users:
        return None
    last = users[-1]["content"]
    system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
    answer_type, _ = _SYSTEMS.get(system, (None, None))
    judged = _JUDGED.fullmatch(last)
    if judged:
        return PromptRequest("evaluation", answer_type, judged["question"], judged["cot"])
    asked = _ASKED.fullmatch(last)
    if asked:
        return PromptRequest("cot", answer_type, asked["question"], None)
    return None
