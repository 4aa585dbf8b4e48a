"""A local fake of the Databricks Jobs API (2.1 and 2.2 paths) on 127.0.0.1, over real HTTP.

Enough of ``jobs/run-now``, ``jobs/runs/submit``, ``jobs/runs/get`` and ``jobs/runs/cancel`` for
the official ``DatabricksHook``: every request is recorded (method, path, body, token), runs are
created with an outcome planned per job (``plan(key, ...)``: a job ID for run-now, the
``run_name`` for submit), and ``idempotency_token`` returns the existing run like the real API.

A run is ``RUNNING`` for its first ``running_gets`` successful ``runs/get`` answers, then
``TERMINATED`` with its planned result. ``outage_at`` lists the ordinals (1-based) of the
``runs/get`` requests of that run to answer with HTTP 503, as if Databricks became unreachable.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "dapi-fake-token"


@dataclass
class Plan:
    result: str = "SUCCESS"  # SUCCESS, FAILED, CANCELED
    running_gets: int = 1
    outage_at: frozenset[int] = frozenset()


@dataclass
class FakeRun:
    run_id: int
    key: str
    body: dict[str, Any]
    plan: Plan
    gets: int = 0
    answered: int = 0
    cancelled: bool = False

    def state(self) -> dict[str, str]:
        if self.cancelled:
            return {
                "life_cycle_state": "TERMINATED",
                "result_state": "CANCELED",
                "state_message": "cancelled",
            }
        if self.answered <= self.plan.running_gets:
            return {"life_cycle_state": "RUNNING", "state_message": "running"}
        message = "" if self.plan.result == "SUCCESS" else "injected failure"
        return {
            "life_cycle_state": "TERMINATED",
            "result_state": self.plan.result,
            "state_message": message,
        }


@dataclass
class Request:
    method: str
    path: str
    body: dict[str, Any]
    authorization: str | None


@dataclass
class FakeDatabricks:
    requests: list[Request] = field(default_factory=list)
    runs: dict[int, FakeRun] = field(default_factory=dict)
    plans: dict[str, list[Plan]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def plan(self, key: str | int, *plans: Plan) -> None:
        """The outcomes of the next runs of ``key`` (a job ID or a run_name), in order."""
        with self.lock:
            self.plans.setdefault(str(key), []).extend(plans)

    def runs_of(self, key: str | int) -> list[FakeRun]:
        return [r for r in self.runs.values() if r.key == str(key)]

    def audit_ids(self, key: str | int) -> list[str]:
        """The audit ID each run of ``key`` was given, in order."""
        out = []
        for run in self.runs_of(key):
            params = run.body.get("job_parameters")
            if params is None:
                params = run.body["tasks"][0]["notebook_task"]["base_parameters"]
            out.append(params["audit_id"])
        return out

    def paths(self) -> Iterable[str]:
        return [r.path for r in self.requests]

    # -- the API -----------------------------------------------------------------------

    def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")  # api, 2.x, jobs, ...
        if len(parts) < 4 or parts[0] != "api" or parts[1] not in ("2.1", "2.2"):
            return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": path}
        endpoint = "/".join(parts[2:])
        with self.lock:
            if method == "POST" and endpoint in ("jobs/run-now", "jobs/runs/submit"):
                token = body.get("idempotency_token")
                if token and token in self.tokens:
                    return 200, {"run_id": self.tokens[token]}
                key = str(body["job_id"]) if endpoint == "jobs/run-now" else body["run_name"]
                queue = self.plans.get(key) or []
                plan = queue.pop(0) if queue else Plan()
                run = FakeRun(len(self.runs) + 1001, key, body, plan)
                self.runs[run.run_id] = run
                if token:
                    self.tokens[token] = run.run_id
                return 200, {"run_id": run.run_id}
            if method == "GET" and endpoint == "jobs/runs/get":
                run = self.runs.get(int(body["run_id"]))
                if run is None:
                    return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "no run"}
                run.gets += 1
                if run.gets in run.plan.outage_at:
                    return 503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "outage"}
                run.answered += 1
                return 200, {
                    "run_id": run.run_id,
                    "job_id": body.get("job_id"),
                    "state": run.state(),
                    "run_page_url": f"http://127.0.0.1:{self.port}/#job/run/{run.run_id}",
                }
            if method == "POST" and endpoint == "jobs/runs/cancel":
                run = self.runs.get(int(body["run_id"]))
                if run is not None:
                    run.cancelled = True
                return 200, {}
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": path}


def serve(fake: FakeDatabricks) -> ThreadingHTTPServer:
    """Start ``fake`` on 127.0.0.1 (a free port) in a daemon thread; ``shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            url = urlsplit(self.path)
            if method == "GET":
                body: dict[str, Any] = {k: v[-1] for k, v in parse_qs(url.query).items()}
            else:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
            auth = self.headers.get("Authorization")
            fake.requests.append(Request(method, url.path, body, auth))
            if auth != f"Bearer {TOKEN}":
                status, answer = 401, {"error_code": "UNAUTHENTICATED", "message": "bad token"}
            else:
                status, answer = fake.handle(method, url.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._answer("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._answer("POST")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
