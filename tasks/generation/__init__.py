"""Generation: plan what the store lacks, then buy it in one live session.

Names load on first use: planning (status, dry runs) does not import the session's Prefect code."""

from tasks.lazy import names_from

_HOMES = {
    "Budget": "tasks.generation.ledger",
    "BudgetExceeded": "tasks.generation.ledger",
    "Summary": "tasks.generation.ledger",
    "ExampleWork": "tasks.generation.plan",
    "Plan": "tasks.generation.plan",
    "Request": "tasks.generation.plan",
    "dry_run_plan": "tasks.generation.plan",
    "plan_generation": "tasks.generation.plan",
    "sync_examples": "tasks.generation.plan",
    "Session": "tasks.generation.session",
    "open_session": "tasks.generation.session",
}

__all__ = sorted(_HOMES)

__getattr__ = names_from(__name__, _HOMES)
