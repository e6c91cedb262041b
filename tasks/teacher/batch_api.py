"""The Batch API endpoints (Files and Batches) of the teacher, and the request lines a batch carries."""

from __future__ import annotations

import json
from collections.abc import Callable

import openai

from tasks.teacher.errors import translate
from tasks.teacher.keys import Sampling
from tasks.teacher.retries import retrying

TAG_KEY = "mindsmirror_tag"  # the metadata key that carries a batch's tag
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "failed", "cancelled")


def request_line(custom_id: str, model: str, messages: list[dict], n: int, sampling: Sampling) -> bytes:
    """One JSONL line of a batch's input file: the chat request an online call would send."""
    body = {"model": model, "messages": messages, "n": n, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
    text = json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}, sort_keys=True)
    return (text + "\n").encode()


class BatchApi:
    """The Files and Batches endpoints, each call under the boundary's retry policy and error tree."""

    def __init__(self, model: str, base_url: str | None, api_key: str, timeout_s: float, max_attempts: int):
        self.model = model
        self.base_url = base_url
        self.max_attempts = max_attempts
        self._secrets = (api_key,)
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)

    def call(self, what: Callable, *args, **kwargs):
        for attempt in retrying(self.max_attempts, max_s=30.0):
            with attempt:
                try:
                    return what(*args, **kwargs)
                except (openai.OpenAIError, ValueError) as error:
                    raise translate(error, None, model=self.model, base_url=self.base_url,
                                    secrets=self._secrets) from None

    # Lists come newest first: a batch or file made for a tag is no older than the tag's record,
    # so the search stops there (less a margin for clocks that disagree).
    _CLOCK_SLACK_S = 3600

    def find_batch(self, tag: str, since: float):
        for batch in self.call(self.client.batches.list, limit=100):
            if (batch.metadata or {}).get(TAG_KEY) == tag:
                return batch
            if batch.created_at < since - self._CLOCK_SLACK_S:
                break
        return None

    def find_file(self, filename: str, since: float):
        for item in self.call(self.client.files.list, purpose="batch", order="desc"):
            if item.filename == filename:
                return item
            if item.created_at < since - self._CLOCK_SLACK_S:
                break
        return None

    def lines_of(self, file_id: str | None) -> list[dict]:
        if not file_id:
            return []
        text = self.call(self.client.files.content, file_id).text
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def upload(self, filename: str, content: bytes):
        return self.call(self.client.files.create, file=(filename, content), purpose="batch")

    def create(self, input_file_id: str, tag: str):
        return self.call(self.client.batches.create, input_file_id=input_file_id, endpoint=ENDPOINT,
                         completion_window="24h", metadata={TAG_KEY: tag})

    def retrieve(self, batch_id: str):
        return self.call(self.client.batches.retrieve, batch_id)

    def cancel(self, batch_id: str):
        return self.call(self.client.batches.cancel, batch_id)
