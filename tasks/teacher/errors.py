"""The teacher's error tree: vendor exceptions are translated once, here, into three kinds.

* TransientError: worth retrying (timeouts, 429, 5xx, dropped connections, malformed bodies).
* OutputError: the teacher answered, but nothing usable came back; retrying would pay again for the
  same kind of answer, so it is recorded instead. A content-filter refusal of one prompt
  (RefusedError) is one of these: it is that request's output, and other examples carry on.
* FatalError: retrying cannot help (bad key, unknown model, a malformed request such as a prompt
  too long); the run stops with one line that says what to fix.

Messages are built from status codes and our own words, never from the request, so the API key
cannot leak through them; server-supplied text is redacted of any secret before it is quoted.
"""

from __future__ import annotations

import email.utils
import json
import re
from datetime import datetime, timezone

import openai

_MAX_QUOTE = 160


class TeacherError(Exception):
    """A teacher request that did not produce a reply; `example_id` names the example it was for."""

    def __init__(self, message: str, *, example_id: str | None = None, status: int | None = None):
        super().__init__(message)
        self.example_id = example_id
        self.status = status
        self.attempts = 0  # requests sent before giving up; set by the client
        self.abandoned = 0  # of them, sent and timed out: possibly billed; set by the client

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class TransientError(TeacherError):
    """Worth retrying; `retry_after` is the server's requested pause in seconds, if it sent one."""

    def __init__(
        self,
        message: str,
        *,
        example_id: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        unreachable: bool = False,
        timed_out: bool = False,
    ):
        super().__init__(message, example_id=example_id, status=status)
        self.retry_after = retry_after
        self.unreachable = unreachable  # no connection could be made (refused, unknown host)
        self.timed_out = timed_out  # sent, then given up on: the server may still bill it


class OutputError(TeacherError):
    """The teacher replied, but with nothing usable (e.g. no choices at all). Not retried."""


class RefusedError(OutputError):
    """The endpoint refused this prompt (a content-filter 400); `reason` says why, for the record."""

    def __init__(self, message: str, *, example_id: str | None = None, status: int | None = None,
                 reason: str = "refused by the content filter"):
        super().__init__(message, example_id=example_id, status=status)
        self.reason = reason


class FatalError(TeacherError):
    """Stops the run: retrying cannot help. The message is one line that says what to fix."""


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` on one line, shortened, with every secret (and any bearer token) masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = re.sub(r"(?i)bearer\s+\S+", "Bearer ***", text)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_QUOTE else text[: _MAX_QUOTE - 3] + "..."


def retry_after_seconds(headers) -> float | None:
    """The pause a response asks for: `retry-after-ms` (preferred) or `retry-after` in seconds.

    Any length is returned as is; the openai SDK's own retry loop ignores values over its cap,
    which is why its retries are off and this value drives our rate limiter instead.
    """
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if seconds >= 0 and seconds != float("inf"):
            return seconds
    when = headers.get("retry-after")  # an HTTP date is allowed too
    try:
        moment = email.utils.parsedate_to_datetime(when) if when else None
    except (TypeError, ValueError):
        return None
    if moment is None or moment.tzinfo is None:
        return None
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


def _server_message(exc: openai.APIStatusError, secrets: tuple[str, ...]) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else None
        if isinstance(message, str) and message:
            return redact(message, secrets)
    return ""


def _code(exc: openai.APIStatusError) -> str:
    body = exc.body
    error = body.get("error", body) if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return str(code or exc.code or "")


def translate(
    exc: BaseException,
    example_id: str | None,
    *,
    model: str | None = None,
    base_url: str | None = None,
    secrets: tuple[str, ...] = (),
) -> TeacherError:
    """The TeacherError for an openai / transport exception raised while asking about `example_id`."""
    where = f"{example_id}: " if example_id else ""
    endpoint = base_url or "the endpoint"
    if isinstance(exc, TeacherError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return TransientError(f"{where}request timed out (raise teacher.timeout_s if this persists)",
                              example_id=example_id, timed_out=True)
    if isinstance(exc, openai.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
        return TransientError(f"{where}connection to {endpoint} failed or dropped ({cause})",
                              example_id=example_id, unreachable=cause == "ConnectError")
    if isinstance(exc, openai.APIResponseValidationError):
        return TransientError(f"{where}malformed response body from {endpoint}", example_id=example_id,
                              status=exc.status_code)
    if isinstance(exc, openai.APIStatusError):
        return _translate_status(exc, where, example_id, model, endpoint, secrets)
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return TransientError(f"{where}malformed response body from {endpoint} (not valid JSON)",
                              example_id=example_id)
    return FatalError(f"{where}unexpected {type(exc).__name__} while calling the teacher: "
                      f"{redact(str(exc), secrets)}", example_id=example_id)


def _translate_status(
    exc: openai.APIStatusError,
    where: str,
    example_id: str | None,
    model: str | None,
    endpoint: str,
    secrets: tuple[str, ...],
) -> TeacherError:
    status = exc.status_code
    said = _server_message(exc, secrets)
    code = _code(exc)
    quoted = f" (server said: {said})" if said else ""
    if status == 429 and code == "insufficient_quota":
        return FatalError(f"{where}429 insufficient quota at {endpoint}: add credit to the account or use "
                          "another key", example_id=example_id, status=status)
    if status == 429 or status in (408, 409) or status >= 500:
        return TransientError(f"{where}HTTP {status} from {endpoint}{quoted}", example_id=example_id,
                              status=status, retry_after=retry_after_seconds(exc.response.headers))
    if status == 400 and (code == "content_filter" or "content management policy" in said.lower()):
        # Azure OpenAI's refusal of one prompt: an output of that request, not a broken run.
        return RefusedError(f"{where}HTTP 400: {endpoint} refused this prompt (content filter){quoted}",
                            example_id=example_id, status=status,
                            reason=f"refused by the content filter{quoted}")
    if status in (401, 403):
        # The server's text is not quoted: some servers echo the key they were sent.
        return FatalError(f"{where}HTTP {status}: {endpoint} rejected the API key (or its permissions); export a "
                          "valid key in the variable named by teacher.api_key_env", example_id=example_id, status=status)
    if status == 404:
        return FatalError(f"{where}HTTP 404: model {model!r} not found at {endpoint}; check teacher.model "
                          "and teacher.base_url", example_id=example_id, status=status)
    if status == 400 and ("context_length" in code or "context length" in said.lower()
                          or "maximum context" in said.lower()):
        return FatalError(f"{where}HTTP 400: prompt plus max_tokens exceed the context window of {model!r}; "
                          "lower teacher.max_tokens / eval_max_tokens or use a model with a longer context"
                          f"{quoted}", example_id=example_id, status=status)
    return FatalError(f"{where}HTTP {status}: {endpoint} refused the request as invalid{quoted}; check the "
                      "teacher section of the config", example_id=example_id, status=status)
