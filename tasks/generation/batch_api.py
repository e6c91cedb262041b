"""The Batch API endpoints (Files and Batches) of the configured teacher, or of the simulated one."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import openai
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from storage import ExampleRow, Store, queries
from storage.records import utcnow
from tasks.config import Config, TeacherConfig
from tasks.generation.session import api_key
from tasks.teacher.errors import FatalError, TransientError, translate

TAG_KEY = "mindsmirror_tag"  # the metadata key that carries a batch's tag
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "expired", "failed", "cancelled")


class BatchApi:
    """The Files and Batches endpoints, each call retried on transient errors here and only here."""

    def __init__(self, teacher: TeacherConfig, base_url: str | None, api_key: str):
        self.teacher = teacher
        self.base_url = base_url
        self._secrets = (api_key,)
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=teacher.timeout_s, max_retries=0)

    def call(self, what: Callable, *args, **kwargs):
        retrying = Retrying(stop=stop_after_attempt(self.teacher.max_attempts), wait=wait_random_exponential(1, 30),
                            retry=retry_if_exception_type(TransientError), reraise=True)
        for attempt in retrying:
            with attempt:
                try:
                    return what(*args, **kwargs)
                except (openai.OpenAIError, ValueError) as error:
                    raise translate(error, None, model=self.teacher.model, base_url=self.base_url,
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


@contextmanager
def open_batch_api(store: Store, config: Config, examples: Sequence[ExampleRow], answer_type: str
                   ) -> Iterator[BatchApi]:
    """The Batch API of the configured endpoint, or of the simulated teacher (teacher.simulate),
    whose files and batches then live beside the store so that the next pass finds them."""
    teacher = config.teacher
    simulator = None
    base_url = teacher.base_url
    if teacher.simulate:
        from tasks.simulator.batches import configure_batches
        from tasks.simulator.server import start_simulator

        folder = store.local_folder()
        if folder is None:
            raise FatalError("teacher.simulate with teacher.mode: batch needs a local store.path")
        simulator = start_simulator(
            examples={example.input: example.label for example in examples}, answer_type=answer_type,
            seed=teacher.simulator.seed, wrong_rate=teacher.simulator.wrong_rate,
        )
        configure_batches(simulator.teacher, state_dir=folder / "_simulator", delay_s=teacher.simulator.batch_delay_s)
        base_url = simulator.url
    try:
        yield BatchApi(teacher, base_url, api_key(teacher))
    finally:
        if simulator is not None:
            simulator.close()


def cancel_batches(store: Store, api: BatchApi) -> list[str]:
    """Cancel every submitted batch still open; the next `generate` stores what they returned."""
    cancelled = []
    for latest in queries.latest_batches(store, open_only=True):
        if latest.batch_id is None or latest.status in TERMINAL:
            continue
        batch = api.call(api.client.batches.cancel, latest.batch_id)
        store.append([dataclasses.replace(latest, event_id=uuid.uuid4().hex, event="polled", keys=(), requests=(),
                                          status=batch.status, created_at=utcnow())])
        cancelled.append(batch.id)
    return cancelled
