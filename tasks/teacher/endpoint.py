"""Where the teacher is: a base URL (the configured one, or the simulated teacher's) and the API key.

`open_endpoint` is the one way a run reaches its teacher, online (TeacherClient) or through the
Batch API (BatchApi). The simulated teacher lives outside the product (the `simulator` package);
a caller that runs with teacher.simulate passes the context manager that starts it and yields its
base URL, so this module never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from tasks.config import TeacherConfig
from tasks.teacher.batch_api import BatchApi
from tasks.teacher.client import Gate, TeacherClient
from tasks.teacher.errors import FatalError
from tasks.teacher.ratelimit import RateLimiter


def api_key(teacher: TeacherConfig) -> str:
    """The API key from teacher.api_key_env (the simulated teacher needs none)."""
    key = os.environ.get(teacher.api_key_env)
    if teacher.simulate:
        return key or "simulated"
    if not key:
        raise FatalError(
            f"the environment variable {teacher.api_key_env} is not set: export your API key there "
            "(or name another variable in teacher.api_key_env)"
        )
    return key


@dataclass(frozen=True)
class Endpoint:
    teacher: TeacherConfig
    base_url: str | None
    _key: str = field(repr=False)

    def chat(self, gate: Gate | None = None) -> TeacherClient:
        """The online client, paced by teacher.max_rpm / max_tpm (and the shared gate, if any)."""
        teacher = self.teacher
        return TeacherClient(
            model=teacher.model, base_url=self.base_url, api_key=self._key, timeout_s=teacher.timeout_s,
            max_attempts=teacher.max_attempts, max_concurrency=teacher.max_concurrency,
            limiter=RateLimiter(teacher.max_rpm, teacher.max_tpm), use_n=teacher.use_n, gate=gate,
        )

    def batches(self) -> BatchApi:
        teacher = self.teacher
        return BatchApi(teacher.model, self.base_url, self._key, teacher.timeout_s, teacher.max_attempts)


@contextmanager
def open_endpoint(teacher: TeacherConfig, simulated: AbstractContextManager[str] | None = None
                  ) -> Iterator[Endpoint]:
    """The configured endpoint; with teacher.simulate, the simulated teacher that `simulated` starts
    (entered only then) for as long as the endpoint is open."""
    if not teacher.simulate:
        yield Endpoint(teacher, teacher.base_url, api_key(teacher))
        return
    if simulated is None:
        raise FatalError("teacher.simulate is on but this caller starts no simulated teacher: run it through "
                         "the mindsmirror CLI, or start `mindsmirror teacher serve` and set teacher.base_url")
    with simulated as base_url:
        yield Endpoint(teacher, base_url, api_key(teacher))
