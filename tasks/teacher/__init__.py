"""The teacher boundary: one client, one error tree, rate limits, request keys, prompts and parsing.

Names load on first use: the client and the error tree import the openai SDK (most of a second),
which planning, status and the store's queries never need."""

from tasks.lazy import names_from

_HOMES = {
    "TeacherClient": "tasks.teacher.client",
    "TeacherReply": "tasks.teacher.client",
    "FatalError": "tasks.teacher.errors",
    "OutputError": "tasks.teacher.errors",
    "RefusedError": "tasks.teacher.errors",
    "TeacherError": "tasks.teacher.errors",
    "TransientError": "tasks.teacher.errors",
    "Sampling": "tasks.teacher.keys",
    "sample_key": "tasks.teacher.keys",
    "parse_cot": "tasks.teacher.parsing",
    "parse_evaluation": "tasks.teacher.parsing",
    "cot_messages": "tasks.teacher.prompts",
    "eval_messages": "tasks.teacher.prompts",
    "prompt_version": "tasks.teacher.prompts",
    "RateLimiter": "tasks.teacher.ratelimit",
    "estimate_tokens": "tasks.teacher.tokens",
}

__all__ = sorted(_HOMES)

__getattr__ = names_from(__name__, _HOMES)
