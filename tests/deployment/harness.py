"""A real Airflow 3 deployment on loopback, for tests: no pytest in here.

``Deployment`` runs the components of a production Airflow as separate processes, each in its
own session (``start_new_session=True``), configured through ``AIRFLOW__...`` environment
variables only:

* a fresh PostgreSQL metadata database (``bfx_meta_<random>``) created on the given server and
  dropped ``WITH (FORCE)`` by ``stop()``, migrated by ``airflow db migrate``;
* ``airflow api-server`` on a free loopback port (it serves the public REST API, the auth
  manager's ``/auth`` app and the Execution API at ``/execution/`` that task processes call);
* ``airflow scheduler`` (``LocalExecutor`` by default), ``airflow dag-processor`` and
  ``airflow triggerer``;
* with ``executor="CeleryExecutor"``: ``redis-server`` on a free loopback port as the broker and
  N ``airflow celery worker`` processes (needs ``apache-airflow-providers-celery`` in the venv).

Authentication is Airflow's ``SimpleAuthManager`` with two users of known passwords:
``admin`` (role admin) and ``viewer`` (role viewer). ``ApiClient`` logs in through
``POST /auth/token`` and sends the token as ``Authorization: Bearer``.

``stop()`` signals every process of the deployment (the sessions it started and their
descendants, nothing else), waits, kills what is left, drops the database. It is idempotent and
registered with ``atexit``; the component processes also get ``PR_SET_PDEATHSIG`` (SIGTERM), so
that a test process killed outright does not leave Airflow running.

Typical use::

    with Deployment(tmp, pg_server_url=url, dags=[dag_file], env={"X": "1"}) as dep:
        api = dep.api
        run_id = api.trigger("my_dag")
        assert api.wait_run("my_dag", run_id, timeout=60) == "success"
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import requests
from sqlalchemy import create_engine, make_url
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from tests.databases import drop_database

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USER",
    "VIEWER_PASSWORD",
    "VIEWER_USER",
    "ApiClient",
    "ApiError",
    "Deployment",
    "DeploymentError",
    "celery_provider_available",
    "ensure_redis",
    "free_port",
]

ADMIN_USER = "admin"
ADMIN_PASSWORD = "bfx-deploy-admin-pw"
VIEWER_USER = "viewer"
VIEWER_PASSWORD = "bfx-deploy-viewer-pw"
USERS = {ADMIN_USER: ("admin", ADMIN_PASSWORD), VIEWER_USER: ("viewer", VIEWER_PASSWORD)}

# Fixed secrets: a test deployment is throw-away and loopback-only.
FERNET_KEY = base64.urlsafe_b64encode(b"bfx-deployment-harness-fernet-k!").decode()
JWT_SECRET = "bfx-deployment-harness-jwt-secret-" + "0123456789abcdef" * 4  # >= 64 bytes
API_SECRET_KEY = "bfx-deployment-harness-api-secret"

HEALTHY_COMPONENTS = ("metadatabase", "scheduler", "dag_processor", "triggerer")
TERMINAL_RUN_STATES = ("success", "failed")
STOP_GRACE_SECONDS = 20.0
MIGRATE_TIMEOUT_SECONDS = 300.0

_PR_SET_PDEATHSIG = 1


class DeploymentError(RuntimeError):
    """The deployment could not be set up, started or reached."""


class ApiError(RuntimeError):
    """The REST API answered with an unexpected status."""

    def __init__(self, response: requests.Response, expected: Iterable[int]) -> None:
        self.response = response
        self.status_code = response.status_code
        request = response.request
        super().__init__(
            f"{request.method} {request.url} -> {response.status_code} "
            f"(expected {sorted(expected)}): {response.text[:2000]}"
        )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def celery_provider_available(python: str | os.PathLike[str] = sys.executable) -> bool:
    """Whether ``apache-airflow-providers-celery`` is importable by the given interpreter."""
    probe = subprocess.run(
        [str(python), "-c", "import airflow.providers.celery.executors.celery_executor"],
        capture_output=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))},
    )
    return probe.returncode == 0


def ensure_redis() -> str:
    """The path of ``redis-server``; installs Debian's package (as root) when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    result = subprocess.run(install, capture_output=True, text=True, timeout=600, env=apt_env)
    if result.returncode != 0:  # an old or empty package list: update once, try again
        subprocess.run(
            ["apt-get", "update"], capture_output=True, text=True, timeout=600, env=apt_env
        )
        result = subprocess.run(install, capture_output=True, text=True, timeout=600, env=apt_env)
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if not found:
        raise DeploymentError(
            f"redis-server is missing and apt-get could not install it "
            f"(exit {result.returncode}): {result.stderr[-2000:]}"
        )
    return found


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    """In the child, before exec: get SIGTERM when the thread that started it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


def _sql_quote_ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    return f'"{name}"'


class ApiClient:
    """A small client of the Airflow 3 REST API (``/api/v2``), logged in or anonymous.

    ``get``/``post``/``patch``/``delete`` return the raw ``requests.Response`` (for status
    checks); the other methods raise ``ApiError`` on an unexpected status. A path that does not
    start with ``/`` is taken relative to ``/api/v2/``.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only: never through a proxy from the env
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def login(cls, base_url: str, username: str, password: str, timeout: float = 30.0) -> ApiClient:
        """``POST /auth/token`` with JSON ``{username, password}`` -> ``{access_token}`` (201)."""
        anonymous = cls(base_url, timeout=timeout)
        response = anonymous.post("/auth/token", {"username": username, "password": password})
        if response.status_code not in (200, 201):
            raise ApiError(response, (200, 201))
        return cls(base_url, token=response.json()["access_token"], timeout=timeout)

    # -- raw verbs ------------------------------------------------------------------------
    def url(self, path: str) -> str:
        if not path.startswith("/"):
            path = "/api/v2/" + path
        return self.base_url + path

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return self.session.request(method, self.url(path), **kwargs)

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> requests.Response:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None) -> requests.Response:
        return self.request("POST", path, json=json)

    def patch(
        self, path: str, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> requests.Response:
        return self.request("PATCH", path, json=json, params=params)

    def delete(self, path: str) -> requests.Response:
        return self.request("DELETE", path)

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        expect: Iterable[int] = (200,),
    ) -> Any:
        """The decoded JSON answer; ``ApiError`` unless the status is in ``expect``."""
        expected = tuple(expect)
        response = self.request(method, path, json=json, params=params)
        if response.status_code not in expected:
            raise ApiError(response, expected)
        return response.json() if response.content else None

    # -- monitoring and DAGs --------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health`` (no authentication needed)."""
        return dict(self.call("GET", "monitor/health"))

    def dag(self, dag_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"dags/{quote(dag_id, safe='')}"))

    def import_errors(self) -> list[dict[str, Any]]:
        answer = self.call("GET", "importErrors", params={"limit": 100})
        return list(answer.get("import_errors", []))

    def wait_dag_parsed(self, dag_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll ``GET /api/v2/dags/{dag_id}`` until 200 (the DAG processor has stored it)."""
        deadline = time.monotonic() + timeout
        path = f"dags/{quote(dag_id, safe='')}"
        while True:
            response = self.get(path)
            if response.status_code == 200:
                return dict(response.json())
            if response.status_code != 404:
                raise ApiError(response, (200, 404))
            if time.monotonic() > deadline:
                errors = [(e.get("filename"), e.get("stack_trace", "")[-500:]) for e in
                          self.import_errors()]  # fmt: skip
                raise TimeoutError(
                    f"DAG {dag_id!r} not parsed within {timeout:.0f} s; import errors: {errors}"
                )
            time.sleep(1.0)

    def unpause(self, dag_id: str) -> dict[str, Any]:
        return self.set_paused(dag_id, False)

    def pause(self, dag_id: str) -> dict[str, Any]:
        return self.set_paused(dag_id, True)

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        """``PATCH /api/v2/dags/{dag_id}`` with ``{"is_paused": ...}``."""
        return dict(
            self.call("PATCH", f"dags/{quote(dag_id, safe='')}", json={"is_paused": paused})
        )

    # -- DAG runs -------------------------------------------------------------------------
    def trigger(
        self,
        dag_id: str,
        conf: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        logical_date: dt.datetime | str | None = None,
    ) -> str:
        """``POST /api/v2/dags/{dag_id}/dagRuns``; returns the run id.

        Airflow 3 requires the key ``logical_date`` in the body (``null`` is allowed: a run
        without a logical date). A ``datetime`` must be timezone-aware.
        """
        if isinstance(logical_date, dt.datetime):
            if logical_date.tzinfo is None:
                raise ValueError("logical_date must be timezone-aware")
            logical_date = logical_date.isoformat()
        body: dict[str, Any] = {"logical_date": logical_date, "conf": dict(conf or {})}
        if run_id is not None:
            body["dag_run_id"] = run_id
        answer = self.call("POST", f"dags/{quote(dag_id, safe='')}/dagRuns", json=body)
        return str(answer["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.call("GET", self._run_path(dag_id, run_id)))

    def wait_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float = 60.0,
        states: Sequence[str] = TERMINAL_RUN_STATES,
    ) -> str:
        """Poll the run until its state is one of ``states``; returns that state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run(dag_id, run_id).get("state")
            if state in states:
                return str(state)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"run {dag_id}/{run_id} still {state!r} after {timeout:.0f} s; "
                    f"tasks: {self.task_states(dag_id, run_id)}"
                )
            time.sleep(1.0)

    def mark_run(self, dag_id: str, run_id: str, state: str) -> dict[str, Any]:
        """``PATCH .../dagRuns/{run_id}`` with ``{"state": ...}`` (queued, success or failed)."""
        return dict(self.call("PATCH", self._run_path(dag_id, run_id), json={"state": state}))

    # -- task instances -------------------------------------------------------------------
    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """All task instances of a run (paged by the server's maximum of 100, ordered by id)."""
        found: list[dict[str, Any]] = []
        path = self._run_path(dag_id, run_id) + "/taskInstances"
        while True:
            page = self.call(
                "GET", path, params={"limit": 100, "offset": len(found), "order_by": "id"}
            )
            batch = list(page.get("task_instances", []))
            found.extend(batch)
            if not batch or len(found) >= int(page.get("total_entries", 0)):
                return found

    def task_states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str | None]:
        """``{(task_id, map_index): state}``; ``map_index`` is -1 for an unmapped task."""
        return {
            (ti["task_id"], int(ti.get("map_index", -1))): ti.get("state")
            for ti in self.task_instances(dag_id, run_id)
        }

    def wait_task_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Sequence[str],
        timeout: float = 60.0,
        map_index: int = -1,
    ) -> str:
        """Poll one task instance until its state is one of ``states``; returns that state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.task_states(dag_id, run_id).get((task_id, map_index))
            if state in states:
                return str(state)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{dag_id}/{run_id}/{task_id}[{map_index}] still {state!r} after "
                    f"{timeout:.0f} s (wanted {list(states)})"
                )
            time.sleep(0.5)

    def mark_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        new_state: str,
        map_index: int | None = None,
        **flags: bool,
    ) -> list[dict[str, Any]]:
        """``PATCH .../taskInstances/{task_id}[/{map_index}]`` with ``{"new_state": ...}``.

        ``new_state`` is success, failed or skipped (Airflow 3.3 refuses any other).
        ``map_index=None`` on a mapped task targets all its map indexes. ``flags`` are the
        body's ``include_upstream``/``include_downstream``/``include_future``/``include_past``.
        Returns the task instances of the answer.
        """
        path = f"{self._run_path(dag_id, run_id)}/taskInstances/{quote(task_id, safe='')}"
        if map_index is not None:
            path += f"/{int(map_index)}"
        answer = self.call("PATCH", path, json={"new_state": new_state, **flags})
        return list(answer.get("task_instances", []))

    def clear_task(
        self,
        dag_id: str,
        run_id: str,
        task_ids: Sequence[str | tuple[str, int]],
        include_downstream: bool = False,
        *,
        include_upstream: bool = False,
        only_failed: bool = False,
        reset_dag_runs: bool = True,
        dry_run: bool = False,
    ) -> list[dict[str, Any]]:
        """``POST /api/v2/dags/{dag_id}/clearTaskInstances`` for one run; returns the TIs.

        A task id alone targets all map indexes of a mapped task; ``(task_id, map_index)``
        only one. ``only_failed`` defaults to False here (the API's default is True).
        """
        body = {
            "dry_run": dry_run,
            "dag_run_id": run_id,
            "task_ids": [list(t) if isinstance(t, tuple) else t for t in task_ids],
            "include_downstream": include_downstream,
            "include_upstream": include_upstream,
            "only_failed": only_failed,
            "reset_dag_runs": reset_dag_runs,
        }
        answer = self.call("POST", f"dags/{quote(dag_id, safe='')}/clearTaskInstances", json=body)
        return list(answer.get("task_instances", []))

    @staticmethod
    def _run_path(dag_id: str, run_id: str) -> str:
        return f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"


class _Component:
    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Deployment:
    """A real Airflow deployment (api-server, scheduler, dag-processor, triggerer) on loopback.

    :param root: an existing or creatable directory that holds everything (AIRFLOW_HOME, dags,
        component logs); it is left in place by ``stop()`` for post-mortems.
    :param pg_server_url: a SQLAlchemy URL of a PostgreSQL server whose login may CREATE
        DATABASE; the metadata database is a fresh one on that server.
    :param dags: paths of ``.py`` DAG files copied into the dags folder before start.
    :param env: extra environment for every component and ``run_cli`` (wins over the defaults,
        e.g. ``AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT``).
    :param executor: ``LocalExecutor`` (default) or ``CeleryExecutor``.
    :param parallelism: ``[core] parallelism``.
    :param celery_workers: with CeleryExecutor, how many ``airflow celery worker`` processes.
    :param celery_concurrency: with CeleryExecutor, ``--concurrency`` of each worker.
    :param start_timeout: the bound, in seconds, on waiting for the health endpoint.
    :param venv_bin: the ``bin`` directory with ``airflow``; default: that of ``sys.executable``.
    """

    CORE_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        pg_server_url: str,
        dags: Iterable[str | os.PathLike[str]] = (),
        env: Mapping[str, str] | None = None,
        executor: str = "LocalExecutor",
        parallelism: int = 4,
        celery_workers: int = 1,
        celery_concurrency: int = 4,
        start_timeout: float = 120.0,
        venv_bin: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.pg_server_url = pg_server_url
        self.dag_sources = [Path(p) for p in dags]
        self.extra_env = {str(k): str(v) for k, v in (env or {}).items()}
        self.executor = executor
        self.parallelism = parallelism
        self.celery_workers = celery_workers
        self.celery_concurrency = celery_concurrency
        self.start_timeout = start_timeout
        self.venv_bin = Path(venv_bin) if venv_bin else Path(sys.executable).parent
        self.airflow_bin = str(self.venv_bin / "airflow")

        self.airflow_home = self.root / "airflow_home"
        self.dags_folder = self.airflow_home / "dags"
        self.logs_dir = self.root / "logs"
        self.passwords_file = self.airflow_home / "simple_auth_manager_passwords.json"

        self.port: int | None = None
        self.redis_port: int | None = None
        self.db_name: str | None = None
        self._components: dict[str, _Component] = {}
        self._env: dict[str, str] | None = None
        self._clients: dict[str, ApiClient] = {}
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self.start_seconds: float | None = None

    # -- properties -----------------------------------------------------------------------
    @property
    def is_celery(self) -> bool:
        return self.executor.rsplit(".", 1)[-1] == "CeleryExecutor"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise DeploymentError("the deployment has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def metadata_db_url(self) -> str:
        """The SQLAlchemy URL (psycopg2, password included) of the metadata database."""
        if self.db_name is None:
            raise DeploymentError("the deployment has not been started")
        return self._db_url(self.db_name).render_as_string(hide_password=False)

    @property
    def env(self) -> dict[str, str]:
        """The full environment of the components (a copy), for any other subprocess."""
        if self._env is None:
            raise DeploymentError("the deployment has not been started")
        return dict(self._env)

    @property
    def api(self) -> ApiClient:
        """A client logged in as ``admin`` (cached)."""
        return self.client(ADMIN_USER)

    @property
    def viewer(self) -> ApiClient:
        """A client logged in as ``viewer`` (cached)."""
        return self.client(VIEWER_USER)

    def client(self, username: str = ADMIN_USER) -> ApiClient:
        if username not in self._clients:
            password = USERS[username][1]
            self._clients[username] = ApiClient.login(self.base_url, username, password)
        return self._clients[username]

    def anonymous(self) -> ApiClient:
        """A client without credentials (for 401/403 checks)."""
        return ApiClient(self.base_url)

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Deployment:
        """Create and migrate the metadata DB, start the components, wait until healthy."""
        with self._lock:
            if self._started:
                raise DeploymentError("start() was already called on this deployment")
            self._started = True
        began = time.monotonic()
        atexit.register(self.stop)
        try:
            if self.is_celery and not celery_provider_available(self.venv_bin / "python"):
                raise DeploymentError(
                    "CeleryExecutor needs apache-airflow-providers-celery, which is not "
                    f"installed in {self.venv_bin.parent} (import airflow.providers.celery "
                    "fails); add it to the environment first"
                )
            if not Path(self.airflow_bin).is_file():
                raise DeploymentError(f"no airflow executable at {self.airflow_bin}")
            self._prepare_home()
            self._create_database()
            self.port = free_port()
            if self.is_celery:
                self.redis_port = free_port()
            self._env = self._build_env()
            self._migrate()
            if self.is_celery:
                self._start_redis()
            for name in self.CORE_COMPONENTS:
                self._launch(name)
            self._wait_healthy(time.monotonic() + self.start_timeout)
            if self.is_celery:
                for n in range(1, self.celery_workers + 1):
                    self._launch(f"celery-worker-{n}")
                self._wait_celery_workers(time.monotonic() + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop every process of the deployment and drop the metadata DB. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self._terminate(list(self._components.values()))
        finally:
            for client in self._clients.values():
                client.session.close()
            self._drop_database()
            atexit.unregister(self.stop)

    # -- components -----------------------------------------------------------------------
    def pids(self) -> dict[str, int]:
        """The pid (= session and process group id) of each running component."""
        return {c.name: c.pid for c in self._components.values() if c.alive() and c.pid}

    def component_pids(self, component: str) -> list[int]:
        """Every live process of one component: its session and its descendants."""
        return sorted(p.pid for p in self._members(self._component(component)))

    def log_path(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    def log_text(self, component: str) -> str:
        """The combined stdout/stderr of a component so far ("" before it wrote anything)."""
        try:
            return self.log_path(component).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self, component: str, sig: int = signal.SIGKILL) -> list[int]:
        """Send ``sig`` to every process of one component; returns the pids signalled."""
        procs = self._members(self._component(component))
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        return sorted(p.pid for p in procs)

    def stop_component(self, component: str) -> None:
        """SIGTERM one component (SIGKILL after the grace period) and reap it."""
        self._terminate([self._component(component)])

    def restart(self, component: str) -> int:
        """Stop what is left of one component, start it again; returns the new pid."""
        # Also what a kill() left behind: the session members that outlived their leader.
        self._terminate([self._component(component)])
        return self._launch(component).popen.pid  # type: ignore[union-attr]

    def add_dag(self, source: str | os.PathLike[str]) -> Path:
        """Copy one more DAG file into the dags folder (picked up at the next refresh)."""
        target = self.dags_folder / Path(source).name
        shutil.copy(source, target)
        return target

    def run_cli(
        self,
        *argv: str,
        timeout: float = 180.0,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (``"airflow", ...``, ``"bfx", ...`` or any) in the deployment's env.

        ``airflow`` is the venv's; the venv's ``bin`` is first on PATH. Output is captured as
        text; ``check=True`` raises ``CalledProcessError`` on a non-zero exit.
        """
        if not argv:
            raise ValueError("run_cli needs a command")
        cmd = list(argv)
        if cmd[0] == "airflow":
            cmd[0] = self.airflow_bin
        full_env = {**self.env, **(dict(env) if env else {})}
        return subprocess.run(
            cmd,
            env=full_env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    # -- internals: setup -----------------------------------------------------------------
    def _prepare_home(self) -> None:
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        (self.airflow_home / "logs").mkdir(exist_ok=True)
        for source in self.dag_sources:
            if not source.is_file():
                raise DeploymentError(f"DAG file {source} does not exist")
            shutil.copy(source, self.dags_folder / source.name)
        passwords = {user: password for user, (_role, password) in USERS.items()}
        self.passwords_file.write_text(json.dumps(passwords) + "\n", encoding="utf-8")

    def _server_url(self) -> URL:
        return make_url(self.pg_server_url)

    def _db_url(self, name: str) -> URL:
        return self._server_url().set(drivername="postgresql+psycopg2", database=name)

    def _admin_engine(self):  # type: ignore[no-untyped-def]
        return create_engine(self.pg_server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def _create_database(self) -> None:
        name = f"bfx_meta_{uuid.uuid4().hex[:16]}"
        engine = self._admin_engine()
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {_sql_quote_ident(name)}")
        finally:
            engine.dispose()
        self.db_name = name

    def _drop_database(self) -> None:
        if self.db_name is None:
            return
        engine = self._admin_engine()
        try:
            drop_database(engine, self.db_name)
        finally:
            engine.dispose()

    def _build_env(self) -> dict[str, str]:
        # Nothing Airflow-related leaks in from the test process (tests/e2e sets AIRFLOW_HOME,
        # AIRFLOW__DATABASE__... and AIRFLOW_CONN_... in os.environ when it is imported).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
        env["PATH"] = f"{self.venv_bin}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        base = self.base_url
        airflow = {
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": FERNET_KEY,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                f"{user}:{role}" for user, (role, _pw) in USERS.items()
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_db_url,
            # Lean on connections: the server is shared with other tests (max_connections 100).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "5",
            "AIRFLOW__API__BASE_URL": base,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": API_SECRET_KEY,
            "AIRFLOW__API__EXPOSE_STACKTRACE": "True",
            "AIRFLOW__API_AUTH__JWT_SECRET": JWT_SECRET,
            # The first Execution API call of a task can take > 5 s (the default) on a busy
            # 2-core machine; the SDK then retries it (a "duplicate start request").
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.airflow_home / "logs"),
            # The log servers are skipped (--skip-serve-logs); free ports all the same, so that
            # nothing in here ever binds or calls the default 8793/8794.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
        if self.is_celery:
            result_db = self._server_url().set(drivername="postgresql", database=self.db_name)
            airflow.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                    "AIRFLOW__CELERY__RESULT_BACKEND": "db+"
                    + result_db.render_as_string(hide_password=False),
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.celery_concurrency),
                }
            )
        env.update(airflow)
        env.update(self.extra_env)
        return env

    def _argv(self, name: str) -> list[str]:
        if name == "api-server":
            return [self.airflow_bin, "api-server", "--host", "127.0.0.1", "--port",
                    str(self.port), "--workers", "1"]  # fmt: skip
        if name == "scheduler":
            return [self.airflow_bin, "scheduler", "--skip-serve-logs"]
        if name == "dag-processor":
            return [self.airflow_bin, "dag-processor"]
        if name == "triggerer":
            return [self.airflow_bin, "triggerer", "--skip-serve-logs"]
        if name == "redis":
            return [ensure_redis(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.root)]  # fmt: skip
        if name.startswith("celery-worker-"):
            n = name.rsplit("-", 1)[-1]
            return [self.airflow_bin, "celery", "worker", "--celery-hostname", f"w{n}@%h",
                    "--concurrency", str(self.celery_concurrency),
                    "--skip-serve-logs"]  # fmt: skip
        raise DeploymentError(f"unknown component {name!r}")

    def _launch(self, name: str) -> _Component:
        if self._stopped:
            raise DeploymentError("the deployment was stopped")
        comp = _Component(name, self._argv(name), self.log_path(name))
        in_main_thread = threading.current_thread() is threading.main_thread()
        with open(comp.log_path, "ab") as log:
            comp.popen = subprocess.Popen(
                comp.argv,
                env=self._env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # PDEATHSIG fires when the starting *thread* ends: only from the main thread.
                preexec_fn=_set_pdeathsig if in_main_thread else None,
            )
        self._components[name] = comp
        return comp

    def _component(self, name: str) -> _Component:
        try:
            return self._components[name]
        except KeyError:
            raise DeploymentError(
                f"no component {name!r} (have {sorted(self._components)})"
            ) from None

    def _migrate(self) -> None:
        log_path = self.log_path("db-migrate")
        with open(log_path, "ab") as log:
            try:
                result = subprocess.run(
                    [self.airflow_bin, "db", "migrate"],
                    env=self._env,
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=MIGRATE_TIMEOUT_SECONDS,
                    start_new_session=True,
                )
            except subprocess.TimeoutExpired as err:
                raise DeploymentError(
                    f"airflow db migrate took over {MIGRATE_TIMEOUT_SECONDS:.0f} s:\n"
                    f"{_tail(log_path)}"
                ) from err
        if result.returncode != 0:
            raise DeploymentError(
                f"airflow db migrate failed (exit {result.returncode}):\n{_tail(log_path)}"
            )

    def _start_redis(self) -> None:
        comp = self._launch("redis")
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if not comp.alive():
                break
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.redis_port), timeout=2) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.2)
        raise DeploymentError(f"redis-server did not answer PING:\n{_tail(comp.log_path)}")

    def _failure_report(self) -> str:
        parts = []
        for comp in self._components.values():
            status = "running" if comp.alive() else f"exited {comp.popen.returncode}"  # type: ignore[union-attr]
            parts.append(f"--- {comp.name} ({status}) ---\n{_tail(comp.log_path)}")
        return "\n".join(parts)

    def _wait_healthy(self, deadline: float) -> None:
        probe = ApiClient(self.base_url, timeout=5.0)
        last: Any = "no answer yet"
        try:
            while True:
                dead = [c.name for c in self._components.values() if not c.alive()]
                if dead:
                    raise DeploymentError(
                        f"component(s) {dead} exited during start:\n{self._failure_report()}"
                    )
                try:
                    response = probe.get("monitor/health")
                    last = response.json() if response.status_code == 200 else response.text
                    if response.status_code == 200 and all(
                        (last.get(name) or {}).get("status") == "healthy"
                        for name in HEALTHY_COMPONENTS
                    ):
                        # Warm the Execution API sub-app (what task processes call).
                        probe.get("/execution/health")
                        return
                except (requests.RequestException, ValueError) as err:
                    last = repr(err)
                if time.monotonic() > deadline:
                    raise DeploymentError(
                        f"not healthy within {self.start_timeout:.0f} s; last health: {last}\n"
                        f"{self._failure_report()}"
                    )
                time.sleep(1.0)
        finally:
            probe.session.close()

    def _wait_celery_workers(self, deadline: float) -> None:
        workers = [c for c in self._components.values() if c.name.startswith("celery-worker-")]
        while True:
            pending = [c for c in workers if " ready." not in self.log_text(c.name)]
            if not pending:
                return
            dead = [c.name for c in workers if not c.alive()]
            if dead or time.monotonic() > deadline:
                raise DeploymentError(
                    f"celery workers not ready (dead: {dead}):\n{self._failure_report()}"
                )
            time.sleep(1.0)

    # -- internals: stopping --------------------------------------------------------------
    @staticmethod
    def _members(comp: _Component) -> list[psutil.Process]:
        """The live processes of a component: its session (sid = its pid) and descendants.

        Task processes move to their own process group (``setpgid``) but stay in the session;
        a grandchild that called ``setsid`` is still a descendant while its parents live.
        """
        leader = comp.pid
        if leader is None:
            return []
        found: dict[int, psutil.Process] = {}
        if comp.alive():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(leader)
                found[root.pid] = root
                for child in root.children(recursive=True):
                    found[child.pid] = child
        for proc in psutil.process_iter():
            if proc.pid in found:
                continue
            try:
                if os.getsid(proc.pid) == leader:
                    found[proc.pid] = proc
            except (OSError, psutil.Error):
                continue
        live = []
        for proc in found.values():  # a zombie is dead already: nothing to signal or wait for
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    live.append(proc)
        return live

    def _terminate(self, comps: list[_Component]) -> None:
        procs: dict[int, psutil.Process] = {}
        for comp in comps:
            for proc in self._members(comp):
                procs.setdefault(proc.pid, proc)
        for proc in procs.values():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        _gone, alive = psutil.wait_procs(list(procs.values()), timeout=STOP_GRACE_SECONDS)
        # Anything still there, and anything born in the session during the shutdown.
        for comp in comps:
            for proc in self._members(comp):
                procs.setdefault(proc.pid, proc)
                if proc not in alive:
                    alive.append(proc)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5.0)
        for comp in comps:
            if comp.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    comp.popen.wait(timeout=5.0)
