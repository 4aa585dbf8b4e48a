"""``bfx catalog init|upgrade|ddl`` and ``bfx --version``: in process through ``main([...])``,
and as the real console script in a subprocess, against real SQLite and PostgreSQL databases."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from airflow_provider_bfx.catalog.engine import create_catalog_engine
from airflow_provider_bfx.catalog.migrate import (
    check_schema,
    current_revision,
    head_revision,
    offline_sql,
    upgrade,
)
from airflow_provider_bfx.cli.main import main
from tests.unit.catalog.test_migrations import catalog_engine, prefix


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``bfx`` in this process. ``main`` marks the process a server context, as the console
    script's process is; the mark is taken back so that later tests run as they would alone."""
    before = os.environ.get("_AIRFLOW_PROCESS_CONTEXT")
    try:
        code = main(list(argv))
    finally:
        if before is None:
            os.environ.pop("_AIRFLOW_PROCESS_CONTEXT", None)
        else:
            os.environ["_AIRFLOW_PROCESS_CONTEXT"] = before
    out, err = capsys.readouterr()
    return code, out, err


def bfx_command() -> list[str]:
    """The installed console script, as a user runs it; the module form where it is absent."""
    script = Path(sys.executable).with_name("bfx")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "airflow_provider_bfx.cli.main"]


def run_bfx(command: list[str], *argv: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIRFLOW_HOME": str(home)}
    return subprocess.run(
        [*command, *argv], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def assert_one_line_error(err: str) -> None:
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


# -- ddl --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql", "mssql", "sqlite"])
def test_ddl_prints_the_dba_script(capsys: pytest.CaptureFixture[str], dialect: str) -> None:
    code, out, err = run_main(capsys, "catalog", "ddl", "--dialect", dialect)

    assert code == 0
    assert err == ""
    assert out == offline_sql(dialect)


def test_ddl_with_a_bad_dialect_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys, "catalog", "ddl", "--dialect", "oracle")

    assert code == 2
    assert out == ""
    assert_one_line_error(err)
    assert "invalid choice: 'oracle'" in err
    assert "'postgresql', 'mssql', 'sqlite'" in err


def test_ddl_from_an_unknown_revision_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(
        capsys, "catalog", "ddl", "--dialect", "sqlite", "--from-revision", "0077"
    )

    assert code == 2
    assert out == ""
    assert_one_line_error(err)
    assert "cannot write the upgrade from revision 0077" in err


# -- init and upgrade -------------------------------------------------------------------------


def test_init_creates_the_catalog_then_says_it_is_already_initialised(
    capsys: pytest.CaptureFixture[str], catalog_url: str
) -> None:
    code, out, err = run_main(capsys, "catalog", "init", "--url", catalog_url)

    assert (code, err) == (0, "")
    assert out == f"initialised the catalog at {shown(catalog_url)}: revision (none) -> 0003\n"
    with catalog_engine(catalog_url) as engine:
        check_schema(engine)

    code, out, err = run_main(capsys, "catalog", "init", "--url", catalog_url)

    assert (code, err) == (0, "")
    assert out == (
        f"the catalog at {shown(catalog_url)} is already initialised (revision 0003); no change\n"
    )


def test_upgrade_creates_an_empty_catalog_and_is_then_a_no_op(
    capsys: pytest.CaptureFixture[str], catalog_url: str
) -> None:
    code, out, err = run_main(capsys, "catalog", "upgrade", "--url", catalog_url)

    assert (code, err) == (0, "")
    assert out == f"upgraded the catalog at {shown(catalog_url)}: revision (none) -> 0003\n"

    code, out, err = run_main(capsys, "catalog", "upgrade", "--url", catalog_url)

    assert (code, err) == (0, "")
    assert out == f"the catalog at {shown(catalog_url)} is already at revision 0003; no change\n"


def test_an_older_catalog_init_names_upgrade_and_upgrade_brings_it_up(
    capsys: pytest.CaptureFixture[str],
    catalog_url: str,
) -> None:
    # The shipped 0001 is older than the shipped head 0003.
    with catalog_engine(catalog_url) as engine:
        upgrade(engine, "0001")

    code, out, err = run_main(capsys, "catalog", "init", "--url", catalog_url)

    assert (code, out) == (1, "")
    assert_one_line_error(err)
    assert "is at schema revision 0001, but this airflow-provider-bfx needs revision 0003" in err
    assert "run `bfx catalog upgrade`" in err

    code, out, err = run_main(capsys, "catalog", "upgrade", "--url", catalog_url)

    assert (code, err) == (0, "")
    assert out == f"upgraded the catalog at {shown(catalog_url)}: revision 0001 -> 0003\n"
    with catalog_engine(catalog_url) as engine:
        check_schema(engine)


def test_a_newer_catalog_fails_init_and_upgrade_naming_the_package_upgrade(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    with catalog_engine(sqlite_url) as engine:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("UPDATE bfx_alembic_version SET version_num = '0099_future'"))

    for verb in ("init", "upgrade"):
        code, out, err = run_main(capsys, "catalog", verb, "--url", sqlite_url)

        assert (code, out) == (1, ""), verb
        assert_one_line_error(err)
        assert "0099_future" in err
        assert "Upgrade airflow-provider-bfx" in err
    with catalog_engine(sqlite_url) as engine:
        assert current_revision(engine) == "0099_future"


def test_unreachable_postgresql_exits_1_with_one_line_and_no_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = closed_port()
    url = f"postgresql+psycopg2://bfx:s3cret@127.0.0.1:{port}/catalog?connect_timeout=3"
    started = time.monotonic()

    code, out, err = run_main(capsys, "catalog", "init", "--url", url)

    assert time.monotonic() - started < 15
    assert (code, out) == (1, "")
    assert_one_line_error(err)
    assert err.startswith(f"bfx: error: cannot connect to the catalog at {shown(url)}: ")
    assert "s3cret" not in err
    assert "refused" in err.lower()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "Could not parse SQLAlchemy URL"),
        ("mysql://user@localhost/catalog", "unsupported catalog dialect 'mysql'"),
    ],
)
def test_a_bad_or_unsupported_url_exits_2(
    capsys: pytest.CaptureFixture[str], url: str, expected: str
) -> None:
    code, out, err = run_main(capsys, "catalog", "upgrade", "--url", url)

    assert (code, out) == (2, "")
    assert_one_line_error(err)
    assert err.startswith("bfx: error: cannot use the catalog URL: ")
    assert expected in err


def test_url_and_conn_id_together_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(
        capsys, "catalog", "init", "--url", "sqlite:///x.db", "--conn-id", "bfx_catalog_default"
    )

    assert (code, out) == (2, "")
    assert_one_line_error(err)
    assert "not allowed with argument" in err


# -- through an Airflow connection ------------------------------------------------------------


def test_init_through_an_airflow_connection(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db_file = tmp_path / "via_connection.db"
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.setenv(
        "AIRFLOW_CONN_BFX_CLI_TEST", json.dumps({"conn_type": "sqlite", "host": str(db_file)})
    )

    code, out, err = run_main(capsys, "catalog", "init", "--conn-id", "bfx_cli_test")

    assert (code, err) == (0, "")
    assert out == (
        f"initialised the catalog at sqlite:///{db_file} (Airflow connection bfx_cli_test): "
        "revision (none) -> 0003\n"
    )
    with catalog_engine(f"sqlite:///{db_file}") as engine:
        check_schema(engine)


def test_an_undefined_airflow_connection_fails_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.delenv("AIRFLOW_CONN_BFX_CLI_MISSING", raising=False)

    code, out, err = run_main(capsys, "catalog", "upgrade", "--conn-id", "bfx_cli_missing")

    assert (code, out) == (1, "")
    assert_one_line_error(err)
    assert "cannot open the catalog through Airflow connection 'bfx_cli_missing'" in err
    assert "--url" in err


# -- the command itself -----------------------------------------------------------------------


def test_version_names_the_package_and_the_schema_revision(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_main(capsys, "--version")

    assert (code, err) == (0, "")
    assert out.startswith("bfx (airflow-provider-bfx ")
    assert out.endswith(f", catalog schema revision {head_revision()})\n")


def test_no_command_prints_the_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(capsys)

    assert (code, out) == (2, "")
    assert "usage: bfx" in err
    assert "catalog" in err


def test_console_script_ddl_mssql_needs_no_airflow(tmp_path: Path) -> None:
    result = run_bfx(bfx_command(), "catalog", "ddl", "--dialect", "mssql", home=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == offline_sql("mssql")
    assert result.stderr == ""

    probe = (
        "import sys\n"
        "from airflow_provider_bfx.cli.main import main\n"
        "code = main(['catalog', 'ddl', '--dialect', 'mssql'])\n"
        "loaded = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "print(loaded, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    result = run_bfx([sys.executable, "-c", probe], home=tmp_path)
    assert result.returncode == 0
    assert result.stderr == "[]\n"


def test_console_script_init_creates_a_sqlite_catalog(tmp_path: Path) -> None:
    db_file = tmp_path / "catalog.db"
    url = f"sqlite:///{db_file}"

    result = run_bfx(bfx_command(), "catalog", "init", "--url", url, home=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"initialised the catalog at {url}: revision (none) -> 0003\n"
    assert result.stderr == ""
    engine = create_catalog_engine(url)
    try:
        check_schema(engine)
        with engine.connect() as conn:
            assert (
                conn.execute(text(f"SELECT count(*) FROM {prefix('sqlite')}Package")).scalar() == 0
            )
    finally:
        engine.dispose()


def test_python_m_reports_errors_as_one_line(tmp_path: Path) -> None:
    port = closed_port()
    url = f"postgresql+psycopg2://bfx:s3cret@127.0.0.1:{port}/catalog?connect_timeout=3"
    module = [sys.executable, "-m", "airflow_provider_bfx.cli.main"]

    result = run_bfx(module, "catalog", "upgrade", "--url", url, home=tmp_path)

    assert result.returncode == 1
    assert result.stdout == ""
    assert_one_line_error(result.stderr)
    assert result.stderr.startswith(f"bfx: error: cannot connect to the catalog at {shown(url)}")
