"""The teacher boundary: one client, one error tree, rate limits, request keys, prompts and parsing."""

from tasks.teacher.client import TeacherClient, TeacherReply, estimate_tokens
from tasks.teacher.errors import FatalError, OutputError, RefusedError, TeacherError, TransientError
from tasks.teacher.keys import Sampling, sample_key
from tasks.teacher.parsing import parse_cot, parse_evaluation
from tasks.teacher.prompts import cot_messages, eval_messages, prompt_version
from tasks.teacher.ratelimit import RateLimiter

__all__ = [
    "FatalError",
    "OutputError",
    "RateLimiter",
    "RefusedError",
    "Sampling",
    "TeacherClient",
    "TeacherError",
    "TeacherReply",
    "TransientError",
    "cot_messages",
    "estimate_tokens",
    "eval_messages",
    "parse_cot",
    "parse_evaluation",
    "prompt_version",
    "sample_key",
]
