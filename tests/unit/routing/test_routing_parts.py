"""The routing's pure parts, without running a DAG: settings, fingerprints, the conf switch."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from airflow_provider_bfx.catalog.codes import VersionMismatchPolicy
from airflow_provider_bfx.catalog.machine import ResumeScope
from airflow_provider_bfx.routing import fingerprint, route_dag
from airflow_provider_bfx.routing.run_conf import RunConfError, parse_run_conf
from airflow_provider_bfx.routing.settings import (
    BfxSettingsError,
    OnCatalogUnavailable,
    load_settings,
    settings_for,
)


@pytest.fixture
def clean_bfx_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in [n for n in os.environ if n.startswith("AIRFLOW__BFX__")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_settings_default_to_the_documented_values(clean_bfx_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.catalog_conn_id == "bfx_catalog_default"
    assert settings.route_all_dags is False
    assert settings.version_mismatch_policy is VersionMismatchPolicy.WARN
    assert settings.lease_duration == 60.0
    assert settings.on_catalog_unavailable is OnCatalogUnavailable.FAIL
    assert settings.resume_scope is ResumeScope.LINEAGE
    assert settings.retry_limit == 3
    assert settings.max_resume_age is None
    assert settings.skip_ahead is True
    assert settings.recovery_link is True


def test_settings_read_environment_overrides_case_insensitively(
    clean_bfx_env: pytest.MonkeyPatch,
) -> None:
    clean_bfx_env.setenv("AIRFLOW__BFX__VERSION_MISMATCH_POLICY", "rerun")
    clean_bfx_env.setenv("AIRFLOW__BFX__ON_CATALOG_UNAVAILABLE", "RUN")
    clean_bfx_env.setenv("AIRFLOW__BFX__RESUME_SCOPE", "logical_date")
    clean_bfx_env.setenv("AIRFLOW__BFX__MAX_RESUME_AGE", "86400")
    clean_bfx_env.setenv("AIRFLOW__BFX__LEASE_DURATION", "120")
    settings = load_settings()
    assert settings.version_mismatch_policy is VersionMismatchPolicy.RERUN
    assert settings.on_catalog_unavailable is OnCatalogUnavailable.RUN
    assert settings.resume_scope is ResumeScope.LOGICAL_DATE
    assert settings.max_resume_age == 86400
    assert settings.lease_duration == 120.0


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("VERSION_MISMATCH_POLICY", "IGNORE", "version_mismatch_policy = 'IGNORE' is not one of"),
        ("ON_CATALOG_UNAVAILABLE", "retry", "on_catalog_unavailable = 'retry' is not one of"),
        ("LEASE_DURATION", "0", "lease_duration = '0' must be positive"),
        ("RETRY_LIMIT", "three", "retry_limit = 'three' is not an integer"),
        ("ROUTE_ALL_DAGS", "maybe", "route_all_dags = 'maybe' is not a boolean"),
        ("RECOVERY_LINK", "sometimes", "recovery_link = 'sometimes' is not a boolean"),
    ],
)
def test_invalid_setting_is_an_error_naming_option_and_value(
    clean_bfx_env: pytest.MonkeyPatch, option: str, value: str, says: str
) -> None:
    clean_bfx_env.setenv(f"AIRFLOW__BFX__{option}", value)
    with pytest.raises(BfxSettingsError, match=f"\\[bfx\\] {says}"):
        load_settings()


def test_route_dag_overrides_apply_to_that_dag_only(clean_bfx_env: pytest.MonkeyPatch) -> None:
    from airflow.sdk import DAG

    with DAG("bfx_parts_routed", schedule=None, start_date=datetime(2024, 1, 1)) as routed:
        pass
    with DAG("bfx_parts_plain", schedule=None, start_date=datetime(2024, 1, 1)) as plain:
        pass
    route_dag(
        routed,
        catalog_conn_id="bfx_catalog_finance",
        version_mismatch_policy="fail",
        retry_limit=5,
        resume_scope="logical_date",
    )
    mine = settings_for(routed)
    assert mine.catalog_conn_id == "bfx_catalog_finance"
    assert mine.version_mismatch_policy is VersionMismatchPolicy.FAIL
    assert mine.dag_retry_limit == 5
    assert mine.resume_scope is ResumeScope.LOGICAL_DATE
    assert "bfx" in routed.tags
    other = settings_for(plain)
    assert other.catalog_conn_id == "bfx_catalog_default"
    assert other.dag_retry_limit is None


def test_route_dag_rejects_an_unknown_policy_at_parse_time() -> None:
    from airflow.sdk import DAG

    with DAG("bfx_parts_typo", schedule=None, start_date=datetime(2024, 1, 1)) as dag:
        pass
    with pytest.raises(BfxSettingsError, match="version_mismatch_policy = 'WRAN'"):
        route_dag(dag, version_mismatch_policy="WRAN")


@pytest.mark.parametrize(
    ("conf", "full"),
    [
        ({"bfx": {"mode": "full"}}, True),
        ({"bfx": {"mode": "FULL"}}, True),
        ({"bfx": {"mode": " full "}}, True),
        ({"bfx": {"mode": "resume"}}, False),
        ({"bfx": {}}, False),
        ({"other": "x"}, False),
        ({}, False),
        (None, False),
    ],
)
def test_full_rerun_is_asked_for_with_bfx_mode_full(conf: object, full: bool) -> None:
    assert parse_run_conf(conf).full_rerun is full


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({"bfx": "full"}, "bfx='full' is not understood: it must be a mapping"),
        ({"bfx": None}, "bfx=None is not understood: it must be a mapping"),
        ({"bfx": ["full"]}, "bfx=['full'] is not understood"),
        ({"bfx": {"mode": "bogus"}}, "bfx.mode='bogus' is not a mode (valid: 'full' or 'resume')"),
        ({"bfx": {"mode": None}}, "bfx.mode=None is not a mode"),
        ({"bfx": {"mode": True}}, "bfx.mode=True is not a mode"),
        ({"bfx": {"full": True}}, "unknown key(s) 'full' (valid: 'mode', 'parent_execution_id')"),
        ({"bfx": {"parent_execution_id": 0}}, "bfx.parent_execution_id=0 is not an ExecutionID"),
        ({"bfx": {"parent_execution_id": True}}, "bfx.parent_execution_id=True is not an Exec"),
        ({"bfx": {"parent_execution_id": "7"}}, "bfx.parent_execution_id='7' is not an Exec"),
    ],
)
def test_a_bfx_conf_entry_that_is_not_understood_is_an_error_naming_the_valid_ones(
    conf: object, named: str
) -> None:
    with pytest.raises(RunConfError) as raised:
        parse_run_conf(conf)
    message = str(raised.value)
    assert named in message
    assert '{"bfx": {"mode": "full" | "resume", "parent_execution_id": <a positive' in message


def test_every_problem_of_a_bfx_conf_is_named_at_once() -> None:
    with pytest.raises(RunConfError) as raised:
        parse_run_conf({"bfx": {"mode": "fresh", "parent": 3, "parent_execution_id": -1}})
    message = str(raised.value)
    assert "unknown key(s) 'parent'" in message
    assert "bfx.mode='fresh' is not a mode" in message
    assert "bfx.parent_execution_id=-1 is not an ExecutionID" in message


def test_a_nested_run_conf_names_its_parent() -> None:
    parsed = parse_run_conf({"bfx": {"parent_execution_id": 42, "mode": "resume"}, "x": 1})
    assert parsed.parent_execution_id == 42 and not parsed.full_rerun
    assert parse_run_conf({"bfx": {"parent_execution_id": None}}).parent_execution_id is None


def _bash(command: str, task_id: str = "t") -> object:
    from airflow.providers.standard.operators.bash import BashOperator

    return BashOperator(task_id=task_id, bash_command=command)


def test_operator_fingerprint_uses_the_raw_template_not_the_rendered_value() -> None:
    first = fingerprint.operator_fingerprint(_bash("load --day {{ ds }}"))
    again = fingerprint.operator_fingerprint(_bash("load --day {{ ds }}"))
    changed = fingerprint.operator_fingerprint(_bash("load --full --day {{ ds }}"))
    assert first == again
    assert first != changed
    assert len(first) == 64


def test_operator_fingerprint_covers_the_callable_source_and_upstream_references() -> None:
    from airflow.sdk import DAG, task

    with DAG("bfx_parts_fp", schedule=None, start_date=datetime(2024, 1, 1)):

        @task
        def extract() -> list[int]:
            return [1, 2]

        @task
        def load_a(rows: list[int]) -> int:
            return len(rows)

        @task
        def load_b(rows: list[int]) -> int:
            return len(rows) + 0

        data = extract()
        a = load_a(data).operator
        b = load_b(data).operator

    defined_a = fingerprint.definition(a)
    assert defined_a["fields"]["op_args"] == [
        {"xcom": "PlainXComArg", "refs": [["extract", "return_value"]]}
    ]
    assert "return len(rows)\n" in defined_a["callable"]
    assert fingerprint.operator_fingerprint(a) != fingerprint.operator_fingerprint(b)


def test_normalized_values_carry_no_memory_address() -> None:
    class Opaque:
        pass

    first, second = fingerprint.normalize(Opaque()), fingerprint.normalize(Opaque())
    assert first == second
    assert "0x" not in str(first)


def test_item_fingerprint_is_the_input_value_not_its_position() -> None:
    assert fingerprint.item_fingerprint({"x": 1}) == fingerprint.item_fingerprint({"x": 1})
    assert fingerprint.item_fingerprint({"x": 1}) != fingerprint.item_fingerprint({"x": 2})
    assert fingerprint.item_fingerprint({"a": 1, "b": [2]}) == fingerprint.item_fingerprint(
        {"b": [2], "a": 1}
    )


@pytest.mark.parametrize(
    ("argv", "forks"),
    [
        (["airflow", "scheduler"], True),
        (["airflow", "celery", "worker", "--queues", "default"], True),
        (["airflow", "api-server"], False),
        (["airflow", "dag-processor"], False),
        (["airflow", "triggerer"], False),
        (["airflow", "dags", "test", "warehouse_batch"], False),
        (["airflow", "celery", "flower"], False),
    ],
)
def test_only_processes_that_fork_tasks_preload_the_routing(argv: list[str], forks: bool) -> None:
    """Decision 0107: the scheduler and a Celery worker import the gate's modules once, so that
    the task processes they fork inherit them; no other Airflow process pays for it."""
    import subprocess
    import sys

    code = (
        "import sys; from airflow_provider_bfx.routing import policy;"
        f" print(policy._preload_task_side({argv!r}),"
        " 'airflow_provider_bfx.routing.gate' in sys.modules,"
        " 'airflow_provider_bfx.catalog.txn' in sys.modules"
        " and 'sqlite' in sys.modules['airflow_provider_bfx.catalog.txn']._BUILT)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    # Decision 0110: and it builds the catalog's statements, which the forked tasks inherit.
    assert out[-3:] == [str(forks), str(forks), str(forks)]


def _steps_of(dag: Any, skipped_ids: str, own: str | None = None) -> list[tuple[str, str]]:
    from airflow_provider_bfx.catalog.results import SkippedAhead
    from airflow_provider_bfx.routing.skip_ahead import steps

    skipped = [SkippedAhead(x, i, "", True, x) for i, x in enumerate(skipped_ids)]
    return [
        ("".join(s.task_id for s in step.write), "".join(s.task_id for s in step.tell))
        for step in steps(dag, skipped, own)
    ]


def test_skip_ahead_tells_a_component_at_once_the_one_unblocking_a_task_first() -> None:
    """Decision 0106: each message tells a whole component of the skipped tasks (so none
    becomes schedulable before it is told), after writing their outputs; the component that
    lets a task run (the restarted load, ``d``) goes first."""
    from airflow.sdk import DAG, chain
    from airflow.sdk.bases.operator import BaseOperator

    with DAG("components", schedule=None) as dag:
        t = {name: BaseOperator(task_id=name) for name in "abcdefghm"}
        chain(t["a"], t["b"], t["c"], t["d"], t["m"])  # a: a first task; d: runs again
        chain(t["e"], t["f"], t["g"], t["h"], t["m"])  # e: a first task
    assert _steps_of(dag, "fghbc") == [("bc", "bc"), ("fgh", "fgh")]
    assert _steps_of(dag, "") == []


def test_skip_ahead_tells_the_component_below_the_deciding_task_last() -> None:
    """Nothing below the deciding task can be scheduled before it ends: the other components,
    whose first tasks' upstreams may end any moment, are told first."""
    from airflow.sdk import DAG, chain
    from airflow.sdk.bases.operator import BaseOperator

    with DAG("below_own", schedule=None) as dag:
        t = {name: BaseOperator(task_id=name) for name in "abcefm"}
        chain(t["a"], t["b"], t["c"], t["m"])  # a, e: first tasks; m runs
        chain(t["e"], t["f"], t["m"])
    assert _steps_of(dag, "bcf") == [("f", "f"), ("bc", "bc")]  # fewest writes first
    assert _steps_of(dag, "bcf", "e") == [("bc", "bc"), ("f", "f")]
    assert _steps_of(dag, "bcf", "a") == [("f", "f"), ("bc", "bc")]


@pytest.mark.parametrize("own", ["load_01", "load_11", "load_41"])
def test_skip_ahead_on_the_fifty_tables(own: str) -> None:
    """The 50-table story resumed: five lines of ten loads, and ``merge``, which reads all
    fifty; load 48 runs again, the five first loads decide for themselves (``own`` is the
    deciding one). Line 5 goes first, after its six outputs, so that load 48 starts early,
    even when it is the deciding load's own line; then the other lines, each after its own
    outputs; the deciding load's line last."""
    from airflow.sdk import DAG, chain
    from airflow.sdk.bases.operator import BaseOperator

    from airflow_provider_bfx.catalog.results import SkippedAhead
    from airflow_provider_bfx.routing.skip_ahead import steps

    names = [f"load_{n:02d}" for n in range(1, 51)]
    with DAG("fifty", schedule=None) as dag:
        loads = [BaseOperator(task_id=name) for name in names]
        merge = BaseOperator(task_id="merge")
        for line in range(0, 50, 10):
            chain(*loads[line : line + 10])
        loads >> merge
    firsts = {names[line] for line in range(0, 50, 10)}
    ahead = [x for x in names[:47] if x not in firsts]
    plan = steps(dag, [SkippedAhead(x, i, "", True, x) for i, x in enumerate(ahead)], own)
    line = {n: [x for x in ahead if names.index(x) // 10 == n] for n in range(5)}
    below = names.index(own) // 10
    others = [n for n in range(4) if n != below]
    order = [4, *others, *([below] if below != 4 else [])]
    assert [([s.task_id for s in step.write], [s.task_id for s in step.tell]) for step in plan] == [
        (line[n], line[n]) for n in order
    ]


def test_skip_ahead_writes_the_outputs_upstream_of_a_component_before_telling_it() -> None:
    """A task that runs may pull the output of any upstream task, also across a task that
    runs (``a -> m -> s -> n``): ``s``'s message waits for ``a``'s output too."""
    from airflow.sdk import DAG, chain
    from airflow.sdk.bases.operator import BaseOperator

    with DAG("upstream_outputs", schedule=None) as dag:
        t = {name: BaseOperator(task_id=name) for name in "amsnxyz"}
        chain(t["a"], t["m"], t["s"], t["n"])  # m and n run; a and s are skipped
        t["a"] >> [t["x"], t["y"], t["z"]]  # a's component is larger than s's needs
    assert _steps_of(dag, "axyzs") == [("as", "s"), ("xyz", "axyz")]


@pytest.mark.parametrize("seed", range(150))
def test_skip_ahead_order_is_safe_on_random_dags(seed: int) -> None:
    """On random DAGs and skipped sets: (1) when a message is sent, every skipped task not yet
    told that has a skipped upstream still has one not told (it is not schedulable); (2) any
    task outside the set that could start then (its upstreams ended: told, or outside the set)
    finds the outputs of all its skipped upstreams, near or far, written; (3) a task told is
    one whose output is written, for any task that may read it (the deciding task may die
    after any step). A task outside the set may have ended once its upstreams ended."""
    import random

    from airflow.sdk import DAG
    from airflow.sdk.bases.operator import BaseOperator

    rng = random.Random(seed)
    n = rng.randint(2, 14)
    with DAG(f"random_{seed}", schedule=None) as dag:
        tasks = [BaseOperator(task_id=f"t{i:02d}") for i in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                if rng.random() < 0.25:
                    tasks[i] >> tasks[j]
    ids = [t.task_id for t in tasks]
    skipped = {x for x in ids if rng.random() < 0.6}
    order = [x for x in ids if x in skipped]
    rng.shuffle(order)

    def ancestors(task_id: str) -> set[str]:
        found, stack = set(), [task_id]
        while stack:
            for up in dag.task_dict[stack.pop()].upstream_task_ids:
                if up not in found:
                    found.add(up)
                    stack.append(up)
        return found

    from airflow_provider_bfx.catalog.results import SkippedAhead
    from airflow_provider_bfx.routing.skip_ahead import steps

    own = rng.choice([x for x in ids if x not in skipped] or [None])
    plan = steps(dag, [SkippedAhead(x, i, "", True, x) for i, x in enumerate(order)], own)
    written: set[str] = set()
    told: set[str] = set()
    for step in plan:
        written.update(s.task_id for s in step.write)
        told.update(s.task_id for s in step.tell)
        for x in skipped - told:
            ups = dag.task_dict[x].upstream_task_ids & skipped
            assert not ups or ups - told, f"{x} schedulable before it is told"
        ended: set[str] = set()  # told, or could have run and ended (ids are topological)
        for x in ids:
            ups = dag.task_dict[x].upstream_task_ids
            if x in told or (x not in skipped and ups <= ended):
                ended.add(x)
        for x in set(ids) - skipped:
            if dag.task_dict[x].upstream_task_ids <= ended:
                missing = (ancestors(x) & skipped) - written
                assert not missing, f"{x} may start before the outputs of {missing}"
            # (3) If the deciding task dies here (or a write fails), the tasks not told yet
            # start, skip themselves and write their own outputs; the deciding task is retried
            # or cleared without skipping ahead again. So a task told already must have its
            # output written, for every task that may read it (decision 0114: telling first and
            # writing after broke this).
            unwritten = (ancestors(x) & told) - written
            assert not unwritten, f"{x} may read {unwritten}, told but not written"
    assert told == skipped
    assert written == skipped
    assert sum(len(step.tell) for step in plan) == len(skipped)


def _mapping_dag() -> Any:
    """Every way a task can feed (or not feed) a mapped node: a mapped task over one output,
    a mapped task group over another, ``expand_kwargs``, a task upstream of a mapped task that
    does not feed its expansion, a mapped task inside a group fed from outside, and a task fed
    only as a plain (unmapped) argument."""
    from airflow.sdk import DAG, task, task_group

    with DAG("bfx_mapping_shapes", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task
        def numbers() -> list[int]:
            return [1, 2]

        @task
        def kwargs_list() -> list[dict[str, int]]:
            return [{"x": 1}]

        @task
        def constant() -> int:
            return 3

        @task
        def gate() -> None:
            return None

        @task
        def double(x: int, k: int = 0) -> int:
            return x * 2 + k

        @task
        def add(x: int) -> int:
            return x

        @task_group
        def per_item(x: int) -> None:
            add(x)

        @task_group
        def inner() -> None:
            @task
            def group_input() -> list[int]:
                return [5]

            double.override(task_id="in_group").expand(x=group_input())

        g, c = gate(), constant()
        mapped = double.expand(x=numbers())
        g >> mapped
        double.override(task_id="by_kwargs").expand_kwargs(kwargs_list())
        double.override(task_id="partial_plain").partial(k=c).expand(x=[1, 2])
        per_item.expand(x=numbers.override(task_id="group_numbers")())
        inner()
        add.override(task_id="after")(mapped)
    return dag


def test_mapped_input_producers_are_those_airflow_names_task_by_task() -> None:
    """``route_tasks`` finds the tasks a mapped node expands over in one walk of the DAG; the
    answer is, task by task, what ``task.iter_mapped_dependants()`` says (decision 0118)."""
    from airflow_provider_bfx.routing.install import mapped_input_producers

    dag = _mapping_dag()
    expected = {t.task_id for t in dag.tasks if next(t.iter_mapped_dependants(), None)}
    assert expected == {"numbers", "kwargs_list", "group_numbers", "inner.group_input"}
    assert mapped_input_producers(dag) == expected


def test_route_tasks_gates_execute_of_exactly_the_mapped_input_producers() -> None:
    """The producers' ``execute`` is wrapped (their replayed output feeds the expansion);
    no other task's is."""
    from airflow_provider_bfx.routing.install import GATED_MARK, route_tasks

    dag = _mapping_dag()
    route_tasks(dag)
    gated = {
        t.task_id for t in dag.tasks if getattr(getattr(t, "execute", None), GATED_MARK, False)
    }
    assert gated == {"numbers", "kwargs_list", "group_numbers", "inner.group_input"}
