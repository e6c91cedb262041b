"""Generation: plan what the store lacks, then buy it in one live session."""

from tasks.generation.ledger import Budget, BudgetExceeded, Summary
from tasks.generation.plan import ExampleWork, Plan, Request, plan_generation, sync_examples
from tasks.generation.session import Session, open_session

__all__ = [
    "Budget",
    "BudgetExceeded",
    "ExampleWork",
    "Plan",
    "Request",
    "Session",
    "Summary",
    "open_session",
    "plan_generation",
    "sync_examples",
]
