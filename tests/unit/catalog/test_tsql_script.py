"""The T-SQL script a DBA runs by hand (``offline_sql("mssql")``, ``bfx catalog ddl``).

There is no SQL Server here, so the script is held to the rules SQL Server enforces at deploy
time that its text can show: batch structure, the limits on index keys and names, reserved words,
UTC defaults, and agreement with the metadata the store queries.
(``tests/unit/catalog/test_migrations.py`` checks the script's header, batches and absence of
PostgreSQL/SQLite syntax; this file adds the SQL Server limits and the column-by-column
agreement.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from sqlalchemy import DateTime
from sqlalchemy.dialects import mssql
from sqlalchemy.schema import CreateColumn, CreateIndex

from airflow_provider_bfx.catalog.migrate import VERSION_TABLE, head_revision, offline_sql
from airflow_provider_bfx.catalog.schema import SCHEMA_NAME, build_schema

DIALECT = mssql.dialect()
CATALOG = build_schema("mssql")

# Reserved keywords of Transact-SQL (SQL Server and Azure SQL Database), from the T-SQL
# reference page "Reserved keywords". An identifier spelled as one of these must be quoted in
# every query; the catalog promises queries that work unquoted (DESIGN.md §3).
_RESERVED_WORDS = """
    ADD ALL ALTER AND ANY AS ASC AUTHORIZATION BACKUP BEGIN BETWEEN BREAK BROWSE BULK BY CASCADE
    CASE CHECK CHECKPOINT CLOSE CLUSTERED COALESCE COLLATE COLUMN COMMIT COMPUTE CONSTRAINT
    CONTAINS CONTAINSTABLE CONTINUE CONVERT CREATE CROSS CURRENT CURRENT_DATE CURRENT_TIME
    CURRENT_TIMESTAMP CURRENT_USER CURSOR DATABASE DBCC DEALLOCATE DECLARE DEFAULT DELETE DENY
    DESC DISK DISTINCT DISTRIBUTED DOUBLE DROP DUMP ELSE END ERRLVL ESCAPE EXCEPT EXEC EXECUTE
    EXISTS EXIT EXTERNAL FETCH FILE FILLFACTOR FOR FOREIGN FREETEXT FREETEXTTABLE FROM FULL
    FUNCTION GOTO GRANT GROUP HAVING HOLDLOCK IDENTITY IDENTITY_INSERT IDENTITYCOL IF IN INDEX
    INNER INSERT INTERSECT INTO IS JOIN KEY KILL LEFT LIKE LINENO LOAD MERGE NATIONAL
    NOCHECK NONCLUSTERED NOT NULL NULLIF OF OFF OFFSETS ON OPEN OPENDATASOURCE OPENQUERY
    OPENROWSET OPENXML OPTION OR ORDER OUTER OVER PERCENT PIVOT PLAN PRECISION PRIMARY PRINT PROC
    PROCEDURE PUBLIC RAISERROR READ READTEXT RECONFIGURE REFERENCES REPLICATION RESTORE RESTRICT
    RETURN REVERT REVOKE RIGHT ROLLBACK ROWCOUNT ROWGUIDCOL RULE SAVE SCHEMA SECURITYAUDIT SELECT
    SEMANTICKEYPHRASETABLE SEMANTICSIMILARITYDETAILSTABLE SEMANTICSIMILARITYTABLE SESSION_USER SET
    SETUSER SHUTDOWN SOME STATISTICS SYSTEM_USER TABLE TABLESAMPLE TEXTSIZE THEN TO TOP TRAN
    TRANSACTION TRIGGER TRUNCATE TRY_CONVERT TSEQUAL UNION UNIQUE UNPIVOT UPDATE UPDATETEXT USE
    USER VALUES VARYING VIEW WAITFOR WHEN WHERE WHILE WITH WITHIN WRITETEXT
"""
TSQL_RESERVED = frozenset(_RESERVED_WORDS.split())

# SQL Server limits on index keys: 900 bytes for a clustered index (the primary key here),
# 1,700 bytes for a nonclustered one (unique constraints and indexes); (max) types not at all.
CLUSTERED_KEY_BYTES = 900
NONCLUSTERED_KEY_BYTES = 1700
MAX_IDENTIFIER = 128

_FIXED_BYTES = {"BIGINT": 8, "INTEGER": 4, "INT": 4, "SMALLINT": 2, "DATETIME2": 8, "BIT": 1}


@dataclass
class TableDef:
    name: str
    columns: dict[str, str]  # column name -> its definition line, as written
    types: dict[str, str]  # column name -> type as written, e.g. NVARCHAR(500)
    primary_key: list[str] = field(default_factory=list)
    uniques: dict[str, list[str]] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    constraint_names: list[str] = field(default_factory=list)  # every CONSTRAINT name, repeats kept


@dataclass
class Script:
    text: str
    batches: list[str]  # without comment lines, stripped
    tables: dict[str, TableDef]
    table_order: list[str]
    indexes: dict[str, tuple[str, list[str]]]  # index name -> (table, columns)


def _ident(text: str) -> str:
    return text.strip().strip("[]")


def _cols(text: str) -> list[str]:
    return [_ident(c) for c in text.split(",")]


def parse(script: str) -> Script:
    batches = [
        "\n".join(line for line in batch.splitlines() if not line.startswith("--")).strip()
        for batch in re.split(r"^GO$", script, flags=re.M)
    ]
    tables: dict[str, TableDef] = {}
    order: list[str] = []
    for m in re.finditer(
        rf"^CREATE TABLE {SCHEMA_NAME}\.(\[?\w+\]?) \(\n(.*?)\n\);$", script, re.M | re.S
    ):
        t = TableDef(_ident(m.group(1)), {}, {})
        for raw in m.group(2).splitlines():
            line = raw.strip().rstrip(",").strip()
            if named := re.match(r"CONSTRAINT (\w+) ", line):
                t.constraint_names.append(named.group(1))
            if pk := re.fullmatch(r"(?:CONSTRAINT \w+ )?PRIMARY KEY \((.*)\)", line):
                t.primary_key = _cols(pk.group(1))
            elif uq := re.fullmatch(r"CONSTRAINT (\w+) UNIQUE \((.*)\)", line):
                t.uniques[uq.group(1)] = _cols(uq.group(2))
            elif ck := re.fullmatch(r"CONSTRAINT (\w+) CHECK \((.*)\)", line):
                t.checks[ck.group(1)] = ck.group(2)
            elif fk := re.fullmatch(
                rf"(?:CONSTRAINT \w+ )?FOREIGN KEY\s*\((.*)\) REFERENCES {SCHEMA_NAME}\."
                r"(\[?\w+\]?) \((.*)\)",
                line,
            ):
                t.references.append(_ident(fk.group(2)))
            elif col := re.fullmatch(r"(\[?\w+\]?) (\w+(?:\((?:\d+|max)(?:, ?\d+)?\))?)(.*)", line):
                name = _ident(col.group(1))
                t.columns[name] = line
                t.types[name] = col.group(2)
            else:
                pytest.fail(f"unrecognised line in CREATE TABLE {t.name}: {line!r}")
        tables[t.name] = t
        order.append(t.name)
    # Later revisions change tables with ALTER TABLE: apply them, so that the tables below are
    # what the whole script leaves behind.
    for m in re.finditer(
        rf"^ALTER TABLE {SCHEMA_NAME}\.(\[?\w+\]?) (ADD|ALTER COLUMN) (\[?\w+\]?) "
        r"(\w+(?:\((?:\d+|max)\))?)(.*);$",
        script,
        re.M,
    ):
        t = tables[_ident(m.group(1))]
        name = _ident(m.group(3))
        assert (m.group(2) == "ADD") == (name not in t.columns), f"{t.name}.{name}: {m.group(0)}"
        t.columns[name] = f"{m.group(3)} {m.group(4)}{m.group(5)}"
        t.types[name] = m.group(4)
    indexes = {
        m.group(2): (_ident(m.group(3)), _cols(m.group(4)))
        for m in re.finditer(
            rf"^CREATE (UNIQUE )?INDEX (\w+) ON {SCHEMA_NAME}\.(\[?\w+\]?) \(([^)]*)\)"
            r"(?: WHERE .*)?;$",
            script,
            re.M,
        )
    }
    return Script(script, batches, tables, order, indexes)


@pytest.fixture(scope="module")
def script() -> Script:
    return parse(offline_sql("mssql"))


def _key_bytes(table: TableDef, columns: list[str]) -> int:
    total = 0
    for column in columns:
        sql_type = table.types[column].upper()
        if m := re.fullmatch(r"(N?)(VAR)?CHAR\((\d+|MAX)\)", sql_type):
            assert m.group(3) != "MAX", f"{table.name}.{column} ({sql_type}) cannot be a key"
            total += int(m.group(3)) * (2 if m.group(1) else 1)
        else:
            assert sql_type in _FIXED_BYTES, f"{table.name}.{column}: unknown size of {sql_type}"
            total += _FIXED_BYTES[sql_type]
    return total


def test_every_catalog_table_and_the_version_table_are_created(script: Script) -> None:
    expected = {t.name for t in CATALOG.metadata.sorted_tables} | {VERSION_TABLE}
    assert set(script.tables) == expected
    assert script.table_order[0] == VERSION_TABLE  # Alembic's table first, in the transaction


def test_columns_match_the_metadata_the_store_queries(script: Script) -> None:
    """Column for column, the script creates what ``build_schema("mssql")`` describes (the
    migration will be frozen at release; from then on this guards the store's view)."""
    for table in CATALOG.metadata.sorted_tables:
        created = script.tables[table.name].columns
        assert list(created) == [c.name for c in table.columns], table.name
        for column in table.columns:
            expected = str(CreateColumn(column).compile(dialect=DIALECT))
            assert created[column.name] == expected, f"{table.name}.{column.name}"
        for index in table.indexes:
            assert str(CreateIndex(index).compile(dialect=DIALECT)) + ";" in script.text


def test_key_sizes_fit_sql_server_index_limits(script: Script) -> None:
    checked = 0
    for table in script.tables.values():
        assert table.primary_key, f"{table.name} has no primary key"
        size = _key_bytes(table, table.primary_key)
        assert size <= CLUSTERED_KEY_BYTES, f"{table.name} primary key: {size} bytes"
        for name, columns in table.uniques.items():
            size = _key_bytes(table, columns)
            assert size <= NONCLUSTERED_KEY_BYTES, f"{name}: {size} bytes"
            checked += 1
    for name, (table_name, columns) in script.indexes.items():
        size = _key_bytes(script.tables[table_name], columns)
        assert size <= NONCLUSTERED_KEY_BYTES, f"{name}: {size} bytes"
        checked += 1
    assert checked == 3 + len(script.indexes) and len(script.indexes) >= 10


def test_identifiers_are_not_reserved_and_fit_the_length_limit(script: Script) -> None:
    names = {SCHEMA_NAME, *script.tables, *script.indexes}
    for table in script.tables.values():
        names |= set(table.columns) | set(table.uniques) | set(table.checks)
    for name in names:
        assert name.upper() not in TSQL_RESERVED, f"{name!r} is a T-SQL reserved keyword"
        assert len(name) <= MAX_IDENTIFIER, name
    assert "ExecutionCheckpoint" in names and "ExecutionRowCount" in names


def test_constraint_names_are_unique_in_the_schema(script: Script) -> None:
    """SQL Server keys constraint names per schema (not per table); index names per table."""
    constraints = [n for t in script.tables.values() for n in t.constraint_names]
    assert len(constraints) == len(set(constraints)), sorted(constraints)
    assert len(constraints) >= 6
    per_table = [(table, name) for name, (table, _) in script.indexes.items()]
    assert len(per_table) == len(set(per_table))


def test_times_are_datetime2_and_default_to_utc(script: Script) -> None:
    for table in CATALOG.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, DateTime):
                written = script.tables[table.name].columns[column.name]
                assert script.tables[table.name].types[column.name] == "DATETIME2", written
                if "DEFAULT" in written:
                    assert written.endswith("DEFAULT SYSUTCDATETIME()"), written
    for local_or_legacy in (
        "GETDATE(",
        "SYSDATETIME(",
        "CURRENT_TIMESTAMP",
        " DATETIME ",
        " TIMESTAMP",  # rowversion on SQL Server, not a time
        " TEXT",
        " NTEXT",
        " IMAGE",
    ):
        assert local_or_legacy not in script.text, local_or_legacy


def test_checks_and_foreign_keys_name_what_exists_before_them(script: Script) -> None:
    for name in script.table_order:
        table = script.tables[name]
        for check, condition in table.checks.items():
            column = re.match(r"(\w+) IN \(", condition)
            assert column and column.group(1) in table.columns, f"{check}: {condition}"
        for target in table.references:
            assert target in script.tables, f"{name} references unknown {target}"
            assert script.table_order.index(target) <= script.table_order.index(name), (
                f"{name} references {target} before it is created"
            )


def test_batches_schema_first_and_one_transaction_around_tables_and_version(
    script: Script,
) -> None:
    body = [b for b in script.batches if b]
    assert body[0] == "SET XACT_ABORT ON;"  # a runtime error rolls the transaction back
    assert body[1] == (
        f"BEGIN TRANSACTION;\n\nIF SCHEMA_ID(N'{SCHEMA_NAME}') IS NULL"
        f" EXEC(N'CREATE SCHEMA {SCHEMA_NAME}');"
    )
    text = script.text
    begin = text.index("BEGIN TRANSACTION;")
    # The last write to the version table records the head, after every change of schema.
    version_row = text.rindex(f"{SCHEMA_NAME}.{VERSION_TABLE} SET version_num=")
    commit = text.rindex("COMMIT;")
    changes = [
        m.start()
        for m in re.finditer(r"^(CREATE (TABLE|(UNIQUE )?INDEX)|ALTER TABLE) ", text, re.M)
    ]
    assert changes and begin < min(changes) and max(changes) < version_row < commit
    assert f"version_num='{head_revision()}'" in text[version_row:commit]
    for batch in body:
        assert not re.search(r"^GO\b", batch, re.M), "GO must stand alone on its line"


GUARD = "IF @@ERROR <> 0 SET NOEXEC ON;"


def test_every_batch_is_followed_by_the_guard_that_stops_the_rest(script: Script) -> None:
    # sqlcmd and SSMS go on with the next batch after an error; the guard turns execution off
    # for every later batch, so a failed CREATE is never followed by a COMMIT of half a schema.
    body = [b for b in script.batches if b]
    work = body[1:-1]  # between SET XACT_ABORT ON and the footer
    assert len(work) % 2 == 0 and len(work) >= 2 * (len(script.tables) + 1)
    statements, guards = work[0::2], work[1::2]
    assert set(guards) == {GUARD}
    assert GUARD not in statements
    assert statements[-1] == "COMMIT;"


def test_the_footer_rolls_back_and_fails_loudly_when_a_batch_failed(script: Script) -> None:
    footer = [b for b in script.batches if b][-1]
    lines = [line.split("--")[0].strip() for line in footer.splitlines()]
    # The success flag is set only while execution is on; NOEXEC OFF comes after it.
    assert lines.index("SET @deployed = 1;") < lines.index("SET NOEXEC OFF;")
    assert "IF @deployed IS NULL" in lines
    assert "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;" in lines
    (raise_line,) = [line for line in lines if line.startswith("RAISERROR(")]
    assert raise_line.endswith(", 16, 1);")  # severity 16: sqlcmd -b exits non-zero
    assert "nothing was deployed" in raise_line


def test_script_from_the_head_revision_changes_nothing() -> None:
    text = offline_sql("mssql", from_revision=head_revision())
    statements = [line for line in text.splitlines() if line and not line.startswith("--")]
    assert statements == []
    assert f"Nothing to do: revision {head_revision()}" in text
