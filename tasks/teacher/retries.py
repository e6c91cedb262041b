"""The one retry policy of the teacher boundary.

Transient errors (timeouts, 429s, 5xx, dropped connections, malformed bodies) are retried with
jittered exponential backoff, up to teacher.max_attempts HTTP attempts; every other error is raised
at once. The openai SDK's own retries are off and Prefect tasks do not retry, so this is the only
place a teacher request is sent again.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
)
from tenacity.wait import wait_random_exponential

from tasks.teacher.errors import TransientError


def _policy(max_attempts: int, initial_s: float, max_s: float,
            before_sleep: Callable[[RetryCallState], None] | None,
            give_up: Callable[[RetryCallState], bool] | None = None) -> dict:
    stop = stop_after_attempt(max_attempts)
    return {
        "stop": stop if give_up is None else stop_any(stop, give_up),
        "wait": wait_random_exponential(multiplier=initial_s, max=max_s),
        "retry": retry_if_exception_type(TransientError),
        "before_sleep": before_sleep,
        "reraise": True,
    }


def retrying(max_attempts: int, *, initial_s: float = 1.0, max_s: float = 60.0,
             before_sleep: Callable[[RetryCallState], None] | None = None) -> Retrying:
    return Retrying(**_policy(max_attempts, initial_s, max_s, before_sleep))


def async_retrying(max_attempts: int, *, initial_s: float = 1.0, max_s: float = 60.0,
                   before_sleep: Callable[[RetryCallState], None] | None = None,
                   give_up: Callable[[RetryCallState], bool] | None = None) -> AsyncRetrying:
    """`give_up` may end the retries early (before max_attempts), looking at the failed attempt."""
    return AsyncRetrying(**_policy(max_attempts, initial_s, max_s, before_sleep, give_up))
