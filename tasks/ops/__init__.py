"""Operating the pipeline: deployment to a Prefect server, store status and result reports.

Names load on first use, so `status` and `sql` do not import Prefect for the deployment code."""

from tasks.lazy import names_from

_HOMES = {
    "DeployError": "tasks.ops.deployment",
    "deploy": "tasks.ops.deployment",
    "markdown_table": "tasks.ops.report",
    "write_report": "tasks.ops.report",
    "describe_status": "tasks.ops.status",
    "run_status": "tasks.ops.status",
}

__all__ = sorted(_HOMES)

__getattr__ = names_from(__name__, _HOMES)
