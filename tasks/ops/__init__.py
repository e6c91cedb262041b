"""Operating the pipeline: deployment to a Prefect server, store status and result reports.

Names load on first use, so `status` and `sql` do not import Prefect for the deployment code."""

from importlib import import_module

_HOMES = {
    "DeployError": "tasks.ops.deployment",
    "deploy": "tasks.ops.deployment",
    "markdown_table": "tasks.ops.report",
    "write_report": "tasks.ops.report",
    "describe_status": "tasks.ops.status",
    "run_status": "tasks.ops.status",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
