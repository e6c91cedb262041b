"""`mindsmirror deploy`: the work pools, the shared teacher rate limit and the deployments.

Everything is created or updated in place, so running it again after editing deploy/prefect.yaml,
a base job template or the RPM is how changes reach the Prefect server; a schedule someone turned on
or off stays that way (and keeps its id). The server is the one PREFECT_API_URL names; without it
Prefect would start a throwaway server whose deployments vanish with the command, so that is refused.

The teacher's API key can live on the server instead of in each worker's shell: with the key in
deploy's environment, a Secret block holds it and the cpu pool's job template hands it to every run
(resolved by the worker when the run starts, so it is stored nowhere else).
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


API_KEY_SECRET = "openai-api-key"  # the Secret block that holds the teacher's API key
CRASH_AUTOMATION = "mindsmirror-crash-silent-runs"
FLOWS = ("distill", "generate", "resume", "train", "evaluate")
# Runs of these flows send a heartbeat every HEARTBEAT_S when the CLI or a pool's job template starts
# them, every 180 s (Prefect's default) otherwise; a run silent for CRASH_AFTER_S (over three of
# Prefect's default intervals) was killed without a word.
HEARTBEAT_S = 30
CRASH_AFTER_S = 600


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
    api_key: str | None = None  # where cpu runs get the API key from, when a Secret block holds it

    def describe(self) -> str:
        lines = [f"Prefect server {self.api_url}", f"work pools: {', '.join(self.pools)}"]
        if self.rate_limit:
            lines.append(self.rate_limit)
        if self.api_key:
            lines.append(self.api_key)
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
                             burst=getattr(args, "burst", None), gpus=getattr(args, "gpus", 1),
                             api_key_env=getattr(args, "api_key_env", "OPENAI_API_KEY"),
                             crash_after_s=getattr(args, "crash_after", CRASH_AFTER_S))
    print(summary.describe())


def deploy_project(prefect_file: Path, rpm: int | None = None, limit_name: str = "teacher-rpm",
                   burst: int | None = None, gpus: int = 1, api_key_env: str = "OPENAI_API_KEY",
                   crash_after_s: int = CRASH_AFTER_S) -> DeploySummary:
    """Create or update the pools of `<prefect_file's folder>/work-pools/*.json` (the gpu pool runs at
    most `gpus` runs at once), the limit, the API key's Secret block and the deployments, keeping
    the active/paused state of every schedule already on the server."""
    if rpm is not None and rpm < 1 or burst is not None and burst < 1 or gpus < 1:
        raise DeployError(f"--rpm, --burst and --gpus must be at least 1, got {rpm}, {burst} and {gpus}")
    wanted = deployments_in(prefect_file)
    api_url = require_server()
    api_key = apply_api_key_secret(api_key_env)
    pools = tuple(apply_work_pool(path, concurrency_limit=gpus if path.stem == "gpu" else None,
                                  env_from_secrets={api_key_env: API_KEY_SECRET} if api_key and path.stem == "cpu"
                                  else None)
                  for path in sorted((prefect_file.parent / "work-pools").glob("*.json")))
    limit = apply_rate_limit(limit_name, rpm, burst) if rpm is not None else None
    apply_crash_automation(crash_after_s)
    states = schedule_states(wanted)
    apply_deployments(prefect_file)
    restore_schedule_states(wanted, states)
    return DeploySummary(api_url, pools, limit, tuple(read_back(wanted)), api_key)


def apply_crash_automation(crash_after_s: int = CRASH_AFTER_S) -> None:
    """Create or update the automation that marks a run of these flows Crashed once its heartbeats
    stop for `crash_after_s` (a process killed with SIGKILL, a machine that died) without it
    reaching a final state; otherwise such a run shows Running forever."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    if crash_after_s <= HEARTBEAT_S:
        raise DeployError(f"--crash-after must be longer than the {HEARTBEAT_S} s between heartbeats, "
                          f"got {crash_after_s}")
    final = [f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")]
    fields = dict(
        name=CRASH_AUTOMATION,
        description=f"Marks a mindsmirror flow run Crashed after {crash_after_s} s without a heartbeat",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *final},
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(FLOWS)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crash_after_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {crash_after_s} s: its process was killed "
                                    "or its machine stopped; rerun or retry it")],
    )
    try:
        existing = Automation.read(name=CRASH_AUTOMATION)
    except ValueError:
        Automation(**fields).create()
        return
    Automation(id=existing.id, **fields).update()


def apply_api_key_secret(api_key_env: str) -> str | None:
    """Store the API key found in `api_key_env` as the Secret block API_KEY_SECRET (a key already
    stored stays when the variable is unset); a line saying where cpu runs get it, or None."""
    from prefect.blocks.system import Secret

    key = os.environ.get(api_key_env)
    if key:
        Secret(value=key).save(API_KEY_SECRET, overwrite=True)
    else:
        try:
            Secret.load(API_KEY_SECRET)
        except ValueError:
            return None
    return (f"API key: Secret block {API_KEY_SECRET!r}, given to every cpu run as {api_key_env} "
            "(workers need no key in their shell)")


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


def apply_work_pool(template_file: Path, concurrency_limit: int | None = None,
                    env_from_secrets: dict[str, str] | None = None) -> str:
    """Create the process work pool named after the file, or update its base job template in place.

    env_from_secrets: variable -> Secret block; each run's environment gets the block's value (the
    worker resolves the reference when it starts the run, so the value is stored nowhere else)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    name = template_file.stem
    try:
        template = json.loads(template_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DeployError(f"{template_file}: not valid JSON: {error}") from None
    env = template["variables"]["properties"]["env"]
    for variable, block in (env_from_secrets or {}).items():
        env["default"] = {**env.get("default", {}), variable: f"{{{{ prefect.blocks.secret.{block} }}}}"}
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
                                                       base_job_template=template,
                                                       concurrency_limit=concurrency_limit))
            else:
                client.update_work_pool(name, WorkPoolUpdate(description=description, base_job_template=template,
                                                             concurrency_limit=concurrency_limit))
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


def _on_server(wanted: list[tuple[str, str]]):
    """The deployments of `wanted` that the server holds."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    names = sorted({name for _, name in wanted})
    with get_client(sync_client=True) as client:
        found = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)))
    return [item for item in found if (item.entrypoint, item.name) in set(wanted)]


def _schedule_key(deployment, schedule) -> tuple:
    # A schedule is known by its slug; one created before schedules had slugs, by what it runs on.
    return deployment.entrypoint, deployment.name, schedule.slug or schedule.schedule.model_dump_json()


def schedule_states(wanted: list[tuple[str, str]]) -> dict[tuple, bool]:
    """Whether each schedule of these deployments is active now, as someone may have set it."""
    return {_schedule_key(item, schedule): schedule.active for item in _on_server(wanted) for schedule in item.schedules}


def restore_schedule_states(wanted: list[tuple[str, str]], states: dict[tuple, bool]) -> None:
    """Put back the active/paused state `prefect deploy` reset to the file's (new schedules keep the file's)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for item in _on_server(wanted):
            for schedule in item.schedules:
                before = states.get(_schedule_key(item, schedule))
                if before is None and schedule.slug:  # a schedule given its slug since the last deploy
                    before = states.get((item.entrypoint, item.name, schedule.schedule.model_dump_json()))
                if before is not None and before != schedule.active:
                    client.update_deployment_schedule(item.id, schedule.id, active=before)


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
