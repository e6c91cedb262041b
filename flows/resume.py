"""Retry just the teacher requests recorded as failed (and evaluate the CoTs they bring)."""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, Failed

from flows.generate import generate
from tasks.config import Config, resolve_config


@flow(name="resume")
async def resume(config: Config | str, show_progress: bool = True):
    """Retry the failed teacher requests of a generation run; everything already stored is kept."""
    state = await generate(resolve_config(config), only_failed=True, show_progress=show_progress,
                           return_state=True)
    # The generate run's own message (what was retried, or why it stopped) is this run's message.
    return Completed(message=state.message) if state.is_completed() else Failed(message=state.message)
