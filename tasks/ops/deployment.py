"""`mindsmirror deploy`: the work pools, the shared teacher rate limit and the deployments.

Everything is created or updated in place, so running it again after editing deploy/prefect.yaml,
a base job template or the RPM is how changes reach the Prefect server. The server is the one
PREFECT_API_URL names; without it Prefect would start a throwaway server whose deployments vanish
with the command, so that is refused.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.config import ConfigError

POOL_DESCRIPTIONS = {
    "cpu": "Teacher calls and store queries: the generate, resume and parent distill flows.",
    "gpu": "Student training and evaluation: the train and evaluate flows. Run one job per GPU (--limit 1).",
}


class DeployError(ConfigError):
    """The deployment files or the Prefect server cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Deployed:
    name: str  # flow/deployment, as `prefect deployment run` and run_deployment take it
    pool: str
    schedules: int
    active_schedules: int


@dataclass(frozen=True)
class DeploySummary:
    api_url: str
    pools: tuple[str, ...]
    rate_limit: str | None
    deployments: tuple[Deployed, ...]

    def describe(self) -> str:
        lines = [f"Prefect server {self.api_url}", f"work pools: {', '.join(self.pools)}"]
        if self.rate_limit:
            lines.append(self.rate_limit)
        lines.append(f"{len(self.deployments)} deployments:")
        for item in self.deployments:
            schedule = ""
            if item.schedules:
                schedule = f", {item.schedules} schedule(s), {item.active_schedules} active"
            lines.append(f"  {item.name} (pool {item.pool}{schedule})")
        pools = " / ".join(f"`prefect worker start --pool {pool}`" for pool in self.pools)
        lines.append(f"start workers with {pools}, then `prefect deployment run NAME`")
        return "\n".join(lines)


def enter_checkout() -> dict[str, str]:
    """The deployments' pull step: make the repository checkout the flow run's working directory.

    Entrypoints (flows/...) and the relative paths in configs (examples/..., runs/...) resolve
    there. The checkout is MINDSMIRROR_HOME when the worker sets it, else the one this package is
    installed from in editable mode (`pip install -e .`). It is looked up on the worker, when the
    run starts, so each worker may keep its checkout anywhere.
    """
    home = os.environ.get("MINDSMIRROR_HOME")
    root = Path(home).expanduser() if home else Path(__file__).resolve().parents[2]
    if not (root / "flows").is_dir() or not (root / "examples").is_dir():
        where = f"MINDSMIRROR_HOME={home}" if home else f"this installation ({root})"
        raise DeployError(f"{where} is not a mindsmirror checkout (no flows/ and examples/ there); on the "
                          "worker, export MINDSMIRROR_HOME=<repository root> or `pip install -e <checkout>`")
    os.chdir(root)
    return {"directory": os.getcwd()}


def deploy(args) -> None:
    """The `mindsmirror deploy` command: args has prefect_file, rpm, limit_name, burst."""
    summary = deploy_project(Path(args.prefect_file), rpm=args.rpm, limit_name=args.limit_name,
                             burst=getattr(args, "burst", None))
    print(summary.describe())


def deploy_project(prefect_file: Path, rpm: int | None = None, limit_name: str = "teacher-rpm",
                   burst: int | None = None) -> DeploySummary:
    """Create or update the pools of `<prefect_file's folder>/work-pools/*.json`, the limit, the deployments."""
    if rpm is not None and rpm < 1 or burst is not None and burst < 1:
        raise DeployError(f"--rpm and --burst must be at least 1, got {rpm} and {burst}")
    wanted = deployments_in(prefect_file)
    api_url = require_server()
    pools = tuple(apply_work_pool(path) for path in sorted((prefect_file.parent / "work-pools").glob("*.json")))
    limit = apply_rate_limit(limit_name, rpm, burst) if rpm is not None else None
    apply_deployments(prefect_file)
    return DeploySummary(api_url, pools, limit, tuple(read_back(wanted)))


def deployments_in(prefect_file: Path) -> list[tuple[str, str]]:
    """(entrypoint, name) of each deployment in the file, after checking that the entrypoints exist here."""
    if not prefect_file.is_file():
        raise DeployError(f"{prefect_file}: no such file; run from the repository root or pass --prefect-file")
    try:
        data = yaml.safe_load(prefect_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise DeployError(f"{prefect_file}: not valid YAML: {error}") from None
    wanted = []
    for index, item in enumerate(data.get("deployments") or []):
        entrypoint, name = item.get("entrypoint"), item.get("name")
        if not entrypoint or not name:
            raise DeployError(f"{prefect_file}: deployments[{index}] needs a name and an entrypoint")
        source = entrypoint.rsplit(":", 1)[0]
        if not Path(source).is_file():
            # Entrypoints are relative to the repository root, and so is the working directory of `prefect deploy`.
            raise DeployError(f"{source} (entrypoint of deployment {name!r}) not found here; "
                              "run `mindsmirror deploy` from the repository root")
        wanted.append((entrypoint, name))
    if not wanted:
        raise DeployError(f"{prefect_file}: no deployments listed")
    return wanted


def require_server() -> str:
    """The API URL of a reachable Prefect server, or a DeployError that says how to get one."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise DeployError(
            "PREFECT_API_URL is not set: start a server (`prefect server start`) and point at it with "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise DeployError(f"the Prefect server at {url} does not answer ({type(failure).__name__}); "
                          "start it with `prefect server start` or fix PREFECT_API_URL")
    return url


def apply_work_pool(template_file: Path) -> str:
    """Create the process work pool named after the file, or update its base job template in place."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    name = template_file.stem
    try:
        template = json.loads(template_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DeployError(f"{template_file}: not valid JSON: {error}") from None
    description = POOL_DESCRIPTIONS.get(name)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(name)
        except ObjectNotFound:
            existing = None
        if existing is not None and existing.type != "process":
            raise DeployError(f"work pool {name!r} exists with type {existing.type!r}, not 'process'; "
                              f"delete it (`prefect work-pool delete {name}`) or rename {template_file}")
        try:
            if existing is None:
                client.create_work_pool(WorkPoolCreate(name=name, type="process", description=description,
                                                       base_job_template=template))
            else:
                client.update_work_pool(name, WorkPoolUpdate(description=description, base_job_template=template))
        except PrefectHTTPStatusError as error:
            raise DeployError(f"{template_file}: the server refused it: {_reason(error.response)}") from None
    return name


def _reason(response) -> str:
    """The server's validation messages, without the echoed request body."""
    try:
        details = response.json().get("exception_detail") or []
        return "; ".join(str(item["msg"]) for item in details) or response.text[:300]
    except (ValueError, AttributeError, KeyError, TypeError):
        return response.text[:300]


def apply_rate_limit(name: str, rpm: int, burst: int | None = None) -> str:
    """Create or update the global rate limit that every run with teacher.shared_rate_limit=name waits on.

    Each request takes a slot and slots free up at rpm/60 per second, so all runs together send at
    most rpm requests a minute. `burst` is how many slots can be taken at once: by default one
    second's worth; a config with use_n: false takes n slots per request, so burst must be >= n_cots.
    """
    from prefect.client.orchestration import get_client

    slots = burst or max(1, math.ceil(rpm / 60))
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, slots, slot_decay_per_second=rpm / 60)
    return (f"rate limit {name}: {rpm} teacher requests/min, bursts of {slots}, shared by every run whose "
            f"config sets teacher.shared_rate_limit: {name}")


def apply_deployments(prefect_file: Path) -> None:
    """`prefect deploy --all`: its own output is shown only when it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    output = (result.stdout + result.stderr).strip()
    # prefect deploy exits 0 when it skips a file it cannot validate; that is a failure here.
    if result.returncode != 0 or "Skipping deployment configuration" in output:
        raise DeployError(f"`prefect deploy --all --prefect-file {prefect_file}` failed:\n{output}")


def read_back(wanted: list[tuple[str, str]]) -> list[Deployed]:
    """The deployments as the server now holds them, in the file's order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    names = sorted({name for _, name in wanted})
    with get_client(sync_client=True) as client:
        found = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)))
        flows = {item.flow_id: client.read_flow(item.flow_id).name for item in found}
    by_key = {(item.entrypoint, item.name): item for item in found}
    deployed = []
    for key in wanted:
        item = by_key.get(key)
        if item is None:
            raise DeployError(f"deployment {key[1]!r} ({key[0]}) is not on the server after `prefect deploy`")
        deployed.append(Deployed(
            name=f"{flows[item.flow_id]}/{item.name}", pool=item.work_pool_name or "-",
            schedules=len(item.schedules), active_schedules=sum(1 for s in item.schedules if s.active),
        ))
    return deployed
