"""Operating the pipeline: deployment to a Prefect server, store status and result reports."""

from tasks.ops.deployment import DeployError, deploy
from tasks.ops.report import markdown_table, write_report
from tasks.ops.status import describe_status, run_status

__all__ = ["DeployError", "deploy", "describe_status", "markdown_table", "run_status", "write_report"]
