"""The functions routing installs on every task; a DAG author may also wire them by hand.

    default_args = {
        "pre_execute": bfx_pre_execute,
        "post_execute": bfx_post_execute,
        "on_success_callback": bfx_on_success,
        "on_failure_callback": bfx_on_failure,
        "on_retry_callback": bfx_on_retry,
        "on_skipped_callback": bfx_on_skipped,
    }

Each one is a two-line trampoline into :mod:`airflow_provider_bfx.routing` on purpose: Airflow
serializes a mapped task's ``pre_execute``/``post_execute`` as the function's SOURCE TEXT, so any
change here would change every routed DAG's serialized hash and create a new DAG version
(decision 0041). Keep these bodies exactly as they are; change the code they call instead.
"""

from __future__ import annotations

from typing import Any


def bfx_pre_execute(context: Any) -> None:
    from airflow_provider_bfx.routing.gate import gate

    gate(context)


def bfx_post_execute(context: Any, result: Any = None) -> None:
    from airflow_provider_bfx.routing.ending import record_output

    record_output(context, result)


def bfx_on_success(context: Any) -> None:
    from airflow_provider_bfx.routing.ending import on_success

    on_success(context)


def bfx_on_failure(context: Any) -> None:
    from airflow_provider_bfx.routing.ending import on_failure

    on_failure(context)


def bfx_on_retry(context: Any) -> None:
    from airflow_provider_bfx.routing.ending import on_retry

    on_retry(context)


def bfx_on_skipped(context: Any) -> None:
    from airflow_provider_bfx.routing.ending import on_skipped

    on_skipped(context)


#: (task attribute, callback) pairs, in the order routing installs them.
TASK_CALLBACKS = (
    ("on_success_callback", bfx_on_success),
    ("on_failure_callback", bfx_on_failure),
    ("on_retry_callback", bfx_on_retry),
    ("on_skipped_callback", bfx_on_skipped),
)


# DAG-level callbacks (the policy appends them to a routed DAG's on_success_callback and
# on_failure_callback): they close the DAG run's batch. Airflow serializes only whether a DAG
# has such callbacks, never their source, but keep them trampolines like the ones above.


def bfx_on_dag_success(context: Any) -> None:
    from airflow_provider_bfx.routing.batch_end import on_dag_success

    on_dag_success(context)


def bfx_on_dag_failure(context: Any) -> None:
    from airflow_provider_bfx.routing.batch_end import on_dag_failure

    on_dag_failure(context)


#: (DAG attribute, callback) pairs, in the order routing installs them.
DAG_CALLBACKS = (
    ("on_success_callback", bfx_on_dag_success),
    ("on_failure_callback", bfx_on_dag_failure),
)
