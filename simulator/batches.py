"""The simulated teacher's Files and Batch APIs: `/v1/files` and `/v1/batches`, as OpenAI serves them.

A batch answers its JSONL lines through the same chat logic as `/v1/chat/completions` (so sample k
of a prompt is the same answer online and in a batch) once its completion delay has passed; nothing
runs in the background: a batch moves on when someone looks at it (retrieve, list, cancel).
The endpoints register in the simulator's route table (simulator.server.ROUTES) when this
module is imported, as the simulator package does. Settings, changed with `POST /_batches` or
`configure_batches`:

- delay_s: seconds from creation until a batch completes;
- expire_after_lines: answer only this many lines of a batch, then let it expire (the rest come back
  in the error file as `batch_expired`, like a real batch past its 24 h window);
- error_every: every k-th line of a batch fails with a 500 in the error file.

`GET /_batches` counts what was uploaded, created and answered, so tests can see that nothing was
submitted twice. With a state folder, files and batches are kept on disk and outlive the process:
the in-process simulator of `teacher.simulate` keeps them beside the store, so one `generate` can
submit a batch and the next can collect it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from simulator.outcomes import Outcome, error
from simulator.server import route

_TERMINAL = ("completed", "expired", "failed", "cancelled")


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    delay_s: float = 0.0
    expire_after_lines: int | None = None
    error_every: int | None = None


def _invalid(status: int, message: str) -> Outcome:
    return error(status, message, "invalid_request_error")


class BatchService:
    """Files and batches of one simulated teacher (see the module docstring)."""

    def __init__(self, teacher, state_dir: str | Path | None = None, clock=time.time):
        self.teacher = teacher
        self.settings = BatchSettings()
        self.clock = clock
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._lock = threading.RLock()
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.counts = {"api_requests": 0, "files_uploaded": 0, "batches_created": 0, "lines_answered": 0, "batches_cancelled": 0}
        if self.state_dir is not None:
            self._load()

    # ---- persistence -------------------------------------------------------------------------

    def _load(self) -> None:
        for path in sorted((self.state_dir / "files").glob("*.json")):
            meta = json.loads(path.read_text())
            self.files[meta["id"]] = meta
            self.contents[meta["id"]] = path.with_suffix(".bin").read_bytes()
        for path in sorted((self.state_dir / "batches").glob("*.json")):
            batch = json.loads(path.read_text())
            self.batches[batch["id"]] = batch
        counts = self.state_dir / "counts.json"
        if counts.is_file():
            self.counts.update(json.loads(counts.read_text()))

    def _save(self, kind: str, item: dict, content: bytes | None = None) -> None:
        if self.state_dir is None:
            return
        folder = self.state_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        if content is not None:
            _write(folder / f"{item['id']}.bin", content)
        _write(folder / f"{item['id']}.json", json.dumps(item).encode())
        _write(self.state_dir / "counts.json", json.dumps(self.counts).encode())

    # ---- HTTP --------------------------------------------------------------------------------

    def respond(self, method: str, target: str, body: bytes, headers) -> Outcome:
        """One request to /v1/files... or /v1/batches... (`target`: the path and query)."""
        url = urlparse(target)
        parts = [part for part in url.path.split("/") if part]
        parts = parts[1:] if parts[:1] == ["v1"] else parts
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        with self._lock:
            self.counts["api_requests"] += 1
            if parts[:1] == ["files"]:
                return self._files(method, parts[1:], body, headers, query)
            return self._batches(method, parts[1:], body, query)

    def control(self, body: bytes | None) -> Outcome:
        """GET /_batches (body None): settings and counts; POST /_batches: change settings too."""
        with self._lock:
            if body is not None:
                try:
                    self.settings = dataclasses.replace(self.settings, **json.loads(body or b"{}"))
                except (TypeError, ValueError) as problem:
                    return _invalid(400, f"bad batch settings: {problem}")
            return Outcome(200, {"settings": dataclasses.asdict(self.settings), **self.counts})

    def _files(self, method: str, rest: list[str], body: bytes, headers, query: dict) -> Outcome:
        if method == "POST" and not rest:
            return self._upload(body, headers.get("Content-Type", ""))
        if method == "GET" and not rest:
            items = [f for f in self.files.values() if query.get("purpose") in (None, f["purpose"])]
            return Outcome(200, _page(items, query))
        meta = self.files.get(rest[0]) if rest else None
        if meta is None:
            return _invalid(404, f"no such file: {rest[0] if rest else ''}")
        if method == "GET" and rest[1:] == ["content"]:
            return Outcome(200, raw=self.contents[meta["id"]])
        if method == "GET" and len(rest) == 1:
            return Outcome(200, meta)
        return _invalid(404, "no such files endpoint on the simulated teacher")

    def _upload(self, body: bytes, content_type: str) -> Outcome:
        message = BytesParser(policy=default_policy).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        fields, filename, content = {}, None, None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                filename = part.get_filename() or "upload.jsonl"
                content = part.get_payload(decode=True)
            elif name:
                fields[name] = part.get_content().strip()
        if content is None:
            return _invalid(400, "the upload has no `file` part")
        self.counts["files_uploaded"] += 1
        meta = self._new_file(filename, fields.get("purpose", "batch"), content)
        return Outcome(200, meta)

    def _new_file(self, filename: str, purpose: str, content: bytes) -> dict:
        meta = {"id": f"file-sim-{uuid.uuid4().hex[:24]}", "object": "file", "bytes": len(content),
                "created_at": int(self.clock()), "filename": filename, "purpose": purpose, "status": "processed"}
        self.files[meta["id"]] = meta
        self.contents[meta["id"]] = content
        self._save("files", meta, content)
        return meta

    def _batches(self, method: str, rest: list[str], body: bytes, query: dict) -> Outcome:
        if method == "POST" and not rest:
            return self._create(body)
        if method == "GET" and not rest:
            for batch in self.batches.values():
                self._advance(batch)
            return Outcome(200, _page(list(self.batches.values()), query))
        batch = self.batches.get(rest[0]) if rest else None
        if batch is None:
            return _invalid(404, f"no such batch: {rest[0] if rest else ''}")
        if method == "POST" and rest[1:] == ["cancel"]:
            if batch["status"] not in _TERMINAL:
                self.counts["batches_cancelled"] += 1
                self._finish(batch, "cancelled", answered=0)
            return Outcome(200, batch)
        if method == "GET" and len(rest) == 1:
            self._advance(batch)
            return Outcome(200, batch)
        return _invalid(404, "no such batches endpoint on the simulated teacher")

    def _create(self, body: bytes) -> Outcome:
        try:
            request = json.loads(body)
            input_file_id = request["input_file_id"]
        except (ValueError, KeyError, TypeError):
            return _invalid(400, "a batch needs input_file_id, endpoint and completion_window")
        if input_file_id not in self.files:
            return _invalid(400, f"no such input file: {input_file_id}")
        if request.get("endpoint") != "/v1/chat/completions":
            return _invalid(400, "the simulated teacher batches only /v1/chat/completions")
        lines = self.contents[input_file_id].decode().splitlines()
        now = int(self.clock())
        self.counts["batches_created"] += 1
        batch = {
            "id": f"batch_sim_{uuid.uuid4().hex[:24]}", "object": "batch", "endpoint": request["endpoint"],
            "input_file_id": input_file_id, "completion_window": request.get("completion_window", "24h"),
            "status": "validating", "created_at": now, "expires_at": now + 86400,
            "metadata": request.get("metadata"), "output_file_id": None, "error_file_id": None,
            "request_counts": {"total": sum(1 for line in lines if line.strip()), "completed": 0, "failed": 0},
        }
        self.batches[batch["id"]] = batch
        self._save("batches", batch)
        return Outcome(200, batch)

    # ---- running a batch ---------------------------------------------------------------------

    def _advance(self, batch: dict) -> None:
        if batch["status"] in _TERMINAL:
            return
        if self.clock() < batch["created_at"] + self.settings.delay_s:
            if batch["status"] == "validating":
                batch["status"] = "in_progress"
                self._save("batches", batch)
            return
        limit = self.settings.expire_after_lines
        self._finish(batch, "completed" if limit is None else "expired", answered=limit)

    def _finish(self, batch: dict, status: str, answered: int | None) -> None:
        lines = [json.loads(line) for line in self.contents[batch["input_file_id"]].decode().splitlines()
                 if line.strip()]
        output, errors = [], []
        for number, line in enumerate(lines):
            if answered is not None and number >= answered:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                errors.append(_line(line["custom_id"], None, {"code": code, "message": f"the batch was {status}"}))
                continue
            every = self.settings.error_every
            if every and number % every == every - 1:
                body = {"error": {"message": "injected line error", "type": "server_error"}}
                errors.append(_line(line["custom_id"], {"status_code": 500, "body": body}, None))
                continue
            key = self.teacher.api_key
            outcome = self.teacher.chat(json.dumps(line["body"]).encode(), key and f"Bearer {key}")
            self.counts["lines_answered"] += 1
            status_code = outcome.status if outcome.raw is None and not outcome.drop else 500
            body = outcome.payload if status_code == outcome.status else {"error": {"message": "fault"}}
            (output if status_code == 200 else errors).append(
                _line(line["custom_id"], {"status_code": status_code, "body": body}, None)
            )
        counts = batch["request_counts"]
        counts["completed"] = len(output)
        counts["failed"] = sum(1 for item in errors if item["response"] is not None)
        if output:
            batch["output_file_id"] = self._new_file(f"{batch['id']}_output.jsonl", "batch_output",
                                                     _jsonl(output))["id"]
        if errors:
            batch["error_file_id"] = self._new_file(f"{batch['id']}_error.jsonl", "batch_output",
                                                    _jsonl(errors))["id"]
        batch["status"] = status
        batch[f"{status}_at"] = int(self.clock())
        self._save("batches", batch)


def _line(custom_id: str, response: dict | None, failure: dict | None) -> dict:
    if response is not None:
        response = {"request_id": f"req_sim_{uuid.uuid4().hex[:12]}", **response}
    return {"id": f"batch_req_sim_{uuid.uuid4().hex[:12]}", "custom_id": custom_id, "response": response,
            "error": failure}


def _jsonl(items: list[dict]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in items).encode()


def _page(items: list[dict], query: dict) -> dict:
    """A cursor page as the openai client reads it: newest first, `after` an id, `has_more`."""
    ordered = sorted(items, key=lambda item: (item["created_at"], item["id"]), reverse=True)
    if query.get("after"):
        ids = [item["id"] for item in ordered]
        ordered = ordered[ids.index(query["after"]) + 1:] if query["after"] in ids else []
    limit = int(query.get("limit") or 20)
    data = ordered[:limit]
    return {"object": "list", "data": data, "has_more": len(ordered) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def _write(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".tmp-{uuid.uuid4().hex}")
    temporary.write_bytes(content)
    temporary.replace(path)


@route("GET", "/v1/files/*", "/v1/batches/*")
def _get(teacher, body: bytes, headers, *, target: str) -> Outcome:
    return batch_service(teacher).respond("GET", target, body, headers)


@route("POST", "/v1/files/*", "/v1/batches/*")
def _post(teacher, body: bytes, headers, *, target: str) -> Outcome:
    return batch_service(teacher).respond("POST", target, body, headers)


@route("GET", "/_batches")
def _settings(teacher, body: bytes, headers) -> Outcome:
    return batch_service(teacher).control(None)


@route("POST", "/_batches")
def _configure(teacher, body: bytes, headers) -> Outcome:
    return batch_service(teacher).control(body)


def batch_service(teacher) -> BatchService:
    """The batch service of a SimulatedTeacher, made on first use."""
    with _services_lock:
        service = teacher.__dict__.get("_batch_service")
        if service is None:
            service = teacher.__dict__["_batch_service"] = BatchService(teacher)
        return service


def configure_batches(teacher, state_dir: str | Path | None = None, **settings) -> BatchService:
    """Set a simulated teacher's batch settings (and a state folder, loaded now); returns its service."""
    with _services_lock:
        if state_dir is not None:
            teacher.__dict__["_batch_service"] = BatchService(teacher, state_dir)
    service = batch_service(teacher)
    service.settings = dataclasses.replace(service.settings, **settings)
    return service


_services_lock = threading.Lock()
