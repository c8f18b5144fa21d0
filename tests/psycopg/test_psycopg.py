"""psycopg 3 tests for Scribe's PostgreSQL wire-protocol front end.

What a Python user would check, written and proven against a real PostgreSQL 15 first, so a
failure against Scribe is a Scribe bug (or a deliberate, documented difference), not a test bug.

Environment:

    SCRIBE_PG_DSN          required, e.g. "host=127.0.0.1 port=5433 user=scribe dbname=scribe"
                           (every test is skipped when it is unset)
    SCRIBE_PG_REPLICA_DSN  optional: a replica of the node behind SCRIBE_PG_DSN; the replica
                           tests are skipped when it is unset
    SCRIBE_PG_IS_SCRIBE=1  optional: also run the checks that only hold on Scribe (e.g. that
                           SET scribe.commit rejects an unknown mode)

The replica tests are Scribe-specific: a Scribe replica forwards writes to the primary, while a
PostgreSQL hot standby refuses them (SQLSTATE 25006), so against PostgreSQL they are skipped
(leave SCRIBE_PG_REPLICA_DSN unset).

Every test creates its own uniquely named table(s) (suffixed with random hex) and drops them at
the end, so the tests are independent and can run repeatedly against the same server. Only SQL
that a SQLite-backed server can reasonably support is used: standard DDL (SERIAL, BIGSERIAL,
INTEGER, BIGINT, TEXT, DOUBLE PRECISION, BYTEA, BOOLEAN, NOT NULL, UNIQUE), plain
INSERT/SELECT/UPDATE/DELETE, RETURNING, SET/SHOW, BEGIN/COMMIT/ROLLBACK and savepoints (which
psycopg itself sends for nested ``conn.transaction()`` blocks). No casts, numeric/timestamp/json
types, arrays, schemas, sequences by name, LISTEN/NOTIFY, server-side cursors or FOR UPDATE.

Protocol paths exercised (psycopg 3 behaviour worth knowing when debugging a failure):
- a statement without parameters goes through the simple query protocol (Query message), so
  several statements separated by ';' work in one ``execute``;
- a statement with parameters goes through the extended protocol (Parse/Bind/Describe/Execute/
  Sync) with ``$1..$n`` placeholders; ints are sent as int2/int4/int8 by size, floats as
  float8, bools as bool, str with OID 0 ("unknown", the server infers it), bytes as bytea in
  *binary* format, None as NULL;
- ``prepare=True`` and any statement executed 5+ times (psycopg's ``prepared_threshold``) use a
  named server-side prepared statement;
- ``executemany`` uses pipeline mode (many Bind/Execute before a single Sync);
- in the default (non-autocommit) mode psycopg sends BEGIN before the first statement and trusts
  the transaction status in ReadyForQuery ('I', 'T', 'E') to decide whether ``commit()`` and
  ``rollback()`` must send anything;
- results are requested in text format and converted by the type OID in RowDescription.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import time

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

DSN = os.environ.get("SCRIBE_PG_DSN")
REPLICA_DSN = os.environ.get("SCRIBE_PG_REPLICA_DSN")
IS_SCRIBE = os.environ.get("SCRIBE_PG_IS_SCRIBE") == "1"

pytestmark = pytest.mark.skipif(not DSN, reason="SCRIBE_PG_DSN is not set")
needs_replica = pytest.mark.skipif(
    not REPLICA_DSN,
    reason="SCRIBE_PG_REPLICA_DSN is not set (replica tests are Scribe-specific)",
)
scribe_only = pytest.mark.skipif(not IS_SCRIBE, reason="SCRIBE_PG_IS_SCRIBE=1 is not set")

CONNECT_TIMEOUT = 10
REPLICATION_WAIT = 15.0  # seconds to wait for a primary's write to show up on a replica

# The usual table: one column of each type the suite uses.
ALL_TYPES = (
    "id SERIAL PRIMARY KEY, name TEXT, score INTEGER, big BIGINT, "
    "ratio DOUBLE PRECISION, data BYTEA, flag BOOLEAN"
)


class DB:
    """Connections and tables of one test; closes the one and drops the other at the end."""

    def __init__(self) -> None:
        self.conns: list[psycopg.Connection] = []
        self.tables: list[str] = []

    def connect(self, dsn: str | None = None, **kwargs) -> psycopg.Connection:
        conn = psycopg.connect(dsn or DSN, connect_timeout=CONNECT_TIMEOUT, **kwargs)
        self.conns.append(conn)
        return conn

    def table(self, columns: str = ALL_TYPES, prefix: str = "t") -> str:
        """Create a uniquely named table (committed) and return its name."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        with psycopg.connect(DSN, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as admin:
            admin.execute(f"CREATE TABLE {name} ({columns})")
        self.tables.append(name)
        return name

    def close(self) -> None:
        # Close every connection first: an open transaction would otherwise hold locks that
        # make DROP TABLE wait.
        for conn in self.conns:
            try:
                conn.close()
            except Exception:
                pass
        if self.tables:
            with psycopg.connect(DSN, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as admin:
                for name in self.tables:
                    admin.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def db():
    d = DB()
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def conn(db):
    """A connection in psycopg's default mode (autocommit off)."""
    return db.connect()


@pytest.fixture
def aconn(db):
    """A connection in autocommit mode."""
    return db.connect(autocommit=True)


def count(conn: psycopg.Connection, table: str, where: str = "", params=None) -> int:
    sql = f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")
    return conn.execute(sql, params).fetchone()[0]


def wait_for(predicate, timeout: float = REPLICATION_WAIT, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Connection basics
# ---------------------------------------------------------------------------------------------


def test_connect_and_select_literal(aconn):
    assert aconn.execute("SELECT 1").fetchone() == (1,)
    row = aconn.execute("SELECT 1, 'two', 3.5").fetchone()
    assert row == (1, "two", 3.5)
    assert aconn.info.transaction_status == TransactionStatus.IDLE


def test_server_reports_parameters(aconn):
    # psycopg decodes text with the server's client_encoding (ParameterStatus at startup);
    # drivers and ORMs read server_version.
    assert aconn.info.encoding == "utf-8"
    assert aconn.info.server_version > 0
    assert aconn.info.parameter_status("server_version")


# ---------------------------------------------------------------------------------------------
# Parameterized insert/select, fetch*, executemany, rowcount
# ---------------------------------------------------------------------------------------------

INTS = [0, 1, -1, 42, -42, 2**31 - 1, -(2**31), 2**31, 2**32 + 5, -(2**40), 2**63 - 1, -(2**63)]
FLOATS = [0.0, 0.1, -2.5, 3.0, 1 / 3, 123456.789, 1e300, -1e-300, 2.0**53]


def test_parameterized_ints(aconn, db):
    t = db.table()
    for v in INTS:
        aconn.execute(f"INSERT INTO {t} (big) VALUES (%s)", (v,))
    got = [r[0] for r in aconn.execute(f"SELECT big FROM {t} ORDER BY id")]
    assert got == INTS
    assert all(type(v) is int for v in got)
    # ints as parameters in WHERE
    for v in INTS:
        assert aconn.execute(f"SELECT big FROM {t} WHERE big = %s", (v,)).fetchall() == [(v,)]
    assert count(aconn, t, "big > %s", (2**31 - 1,)) == 3
    assert count(aconn, t, "big < %s", (0,)) == 5


def test_parameterized_integer_column(aconn, db):
    t = db.table()
    values = [0, 7, -7, 2**31 - 1, -(2**31)]
    for v in values:
        aconn.execute(f"INSERT INTO {t} (score) VALUES (%s)", [v])
    got = [r[0] for r in aconn.execute(f"SELECT score FROM {t} ORDER BY id")]
    assert got == values
    assert all(type(v) is int for v in got)


def test_parameterized_floats(aconn, db):
    t = db.table()
    for v in FLOATS:
        aconn.execute(f"INSERT INTO {t} (ratio) VALUES (%s)", (v,))
    got = [r[0] for r in aconn.execute(f"SELECT ratio FROM {t} ORDER BY id")]
    assert all(type(v) is float for v in got), got
    assert got == FLOATS  # exact: the text form must round-trip a double
    assert aconn.execute(f"SELECT ratio FROM {t} WHERE ratio = %s", (0.1,)).fetchall() == [(0.1,)]
    assert count(aconn, t, "ratio < %s", (0.0,)) == 2


def test_parameterized_text(aconn, db):
    t = db.table()
    names = ["alice", "Bob", "", "with space", "x" * 10_000]
    for i, n in enumerate(names):
        aconn.execute(f"INSERT INTO {t} (name, score) VALUES (%s, %s)", (n, i))
    assert [r[0] for r in aconn.execute(f"SELECT name FROM {t} ORDER BY id")] == names
    assert aconn.execute(f"SELECT score FROM {t} WHERE name = %s", ("Bob",)).fetchone() == (1,)
    assert aconn.execute(f"SELECT score FROM {t} WHERE name = %s", ("bob",)).fetchone() is None


def test_mixed_row_round_trip(aconn, db):
    t = db.table()
    row = ("mixed", -5, 2**40, 2.25, b"\x00\xffabc", True)
    cur = aconn.execute(
        f"INSERT INTO {t} (name, score, big, ratio, data, flag) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        row,
    )
    (rid,) = cur.fetchone()
    got = aconn.execute(
        f"SELECT name, score, big, ratio, data, flag FROM {t} WHERE id = %s", (rid,)
    ).fetchone()
    assert got == row
    assert [type(v) for v in got] == [str, int, int, float, bytes, bool]


def test_literal_values(aconn, db):
    t = db.table()
    aconn.execute(
        f"INSERT INTO {t} (name, score, big, ratio, flag) "
        "VALUES ('lit', -7, 5000000000, 1.5, TRUE)"
    )
    aconn.execute(f"INSERT INTO {t} (name, score) VALUES ('it''s', 8)")
    assert aconn.execute(
        f"SELECT name, score, big, ratio, flag FROM {t} WHERE name = 'lit'"
    ).fetchone() == ("lit", -7, 5000000000, 1.5, True)
    assert aconn.execute(f"SELECT score FROM {t} WHERE name = 'it''s'").fetchone() == (8,)
    cur = aconn.execute(f"UPDATE {t} SET score = score + 1 WHERE score > 0")
    assert cur.rowcount == 1
    cur = aconn.execute(f"DELETE FROM {t} WHERE name = 'lit'")
    assert cur.rowcount == 1
    assert aconn.execute(f"SELECT name, score FROM {t}").fetchall() == [("it's", 9)]


def test_multiple_statements_without_params(aconn, db):
    # No parameters: psycopg uses the simple query protocol, which allows several statements.
    t = db.table()
    aconn.execute(
        f"INSERT INTO {t} (name) VALUES ('a'); INSERT INTO {t} (name) VALUES ('b'); "
        f"UPDATE {t} SET score = 1"
    )
    assert aconn.execute(f"SELECT name, score FROM {t} ORDER BY id").fetchall() == [
        ("a", 1),
        ("b", 1),
    ]


def test_fetchone_fetchmany_fetchall_iteration(aconn, db):
    t = db.table()
    with aconn.cursor() as cur:
        for i in range(5):
            cur.execute(f"INSERT INTO {t} (name, score) VALUES (%s, %s)", (f"n{i}", i))
        cur.execute(f"SELECT id, name, score FROM {t} ORDER BY id")
        assert [d.name for d in cur.description] == ["id", "name", "score"]
        assert cur.rowcount == 5  # from the "SELECT 5" command tag
        assert cur.fetchone() == (1, "n0", 0)
        assert cur.fetchmany(2) == [(2, "n1", 1), (3, "n2", 2)]
        assert cur.fetchall() == [(4, "n3", 3), (5, "n4", 4)]
        assert cur.fetchone() is None
        assert cur.fetchall() == []

        cur.execute(f"SELECT name FROM {t} WHERE score >= %s ORDER BY id", (3,))
        assert [r for r in cur] == [("n3",), ("n4",)]

        cur.execute(f"SELECT name FROM {t} WHERE score > %s", (100,))
        assert cur.fetchone() is None
        assert cur.fetchall() == []
        assert cur.rowcount == 0

    with aconn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT name, score FROM {t} WHERE id = %s", (2,))
        assert cur.fetchone() == {"name": "n1", "score": 1}


def test_executemany(conn, db):
    t = db.table()
    rows = [(f"name{i}", i, i * 0.5) for i in range(100)]
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {t} (name, score, ratio) VALUES (%s, %s, %s)", rows)
        assert cur.rowcount == 100
    conn.commit()
    got = conn.execute(f"SELECT name, score, ratio FROM {t} ORDER BY id").fetchall()
    assert got == rows
    conn.commit()


def test_executemany_returning(aconn, db):
    t = db.table()
    with aconn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {t} (name) VALUES (%s) RETURNING id",
            [("a",), ("b",), ("c",)],
            returning=True,
        )
        ids = []
        while True:
            ids.append(cur.fetchone()[0])
            if not cur.nextset():
                break
    assert ids == [1, 2, 3]


def test_executemany_update_rowcount(aconn, db):
    t = db.table()
    aconn.execute(f"INSERT INTO {t} (name, score) VALUES ('a', 1), ('b', 1), ('c', 2)")
    with aconn.cursor() as cur:
        cur.executemany(f"UPDATE {t} SET name = %s WHERE score = %s", [("x", 1), ("y", 2), ("z", 9)])
        assert cur.rowcount == 3
    assert aconn.execute(f"SELECT name FROM {t} ORDER BY id").fetchall() == [("x",), ("x",), ("y",)]


def test_rowcount_and_status_of_dml(aconn, db):
    t = db.table()
    cur = aconn.cursor()
    cur.execute(f"INSERT INTO {t} (name, score) VALUES (%s, %s)", ("a", 1))
    assert cur.rowcount == 1
    assert cur.statusmessage == "INSERT 0 1"
    cur.execute(f"INSERT INTO {t} (name, score) VALUES ('b', 1), ('c', 2), ('d', 3)")
    assert cur.rowcount == 3
    assert cur.statusmessage == "INSERT 0 3"

    cur.execute(f"UPDATE {t} SET score = %s WHERE score = %s", (10, 1))
    assert cur.rowcount == 2
    assert cur.statusmessage == "UPDATE 2"
    cur.execute(f"UPDATE {t} SET score = %s WHERE name = %s", (0, "nobody"))
    assert cur.rowcount == 0
    assert cur.statusmessage == "UPDATE 0"

    cur.execute(f"DELETE FROM {t} WHERE name = %s", ("c",))
    assert cur.rowcount == 1
    assert cur.statusmessage == "DELETE 1"
    cur.execute(f"DELETE FROM {t} WHERE score = %s", (10,))
    assert cur.rowcount == 2
    cur.execute(f"DELETE FROM {t} WHERE score = %s", (10,))
    assert cur.rowcount == 0
    cur.execute(f"DELETE FROM {t}")
    assert cur.rowcount == 1
    assert count(aconn, t) == 0


# ---------------------------------------------------------------------------------------------
# SERIAL / BIGSERIAL / RETURNING
# ---------------------------------------------------------------------------------------------


def test_serial_ids_in_order(aconn, db):
    t = db.table()
    for name in ("a", "b", "c"):
        aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", (name,))
    assert aconn.execute(f"SELECT id, name FROM {t} ORDER BY id").fetchall() == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
    ]


def test_returning_id(aconn, db):
    t = db.table()
    ids = [
        aconn.execute(f"INSERT INTO {t} (name) VALUES (%s) RETURNING id", (n,)).fetchone()[0]
        for n in ("a", "b", "c")
    ]
    assert ids == [1, 2, 3]
    assert all(type(i) is int for i in ids)
    # literal insert, multi-column RETURNING
    cur = aconn.execute(f"INSERT INTO {t} (name, score) VALUES ('d', 4) RETURNING id, name, score")
    assert cur.fetchall() == [(4, "d", 4)]
    assert [d.name for d in cur.description] == ["id", "name", "score"]
    # multi-row insert returns every id
    cur = aconn.execute(f"INSERT INTO {t} (name) VALUES (%s), (%s) RETURNING id", ("e", "f"))
    assert cur.fetchall() == [(5,), (6,)]
    # UPDATE ... RETURNING and DELETE ... RETURNING
    cur = aconn.execute(f"UPDATE {t} SET score = 9 WHERE id = %s RETURNING id, score", (2,))
    assert cur.fetchall() == [(2, 9)]
    cur = aconn.execute(f"DELETE FROM {t} WHERE id = %s RETURNING name", (3,))
    assert cur.fetchall() == [("c",)]


def test_bigserial(aconn, db):
    t = db.table("id BIGSERIAL PRIMARY KEY, name TEXT")
    ids = [
        aconn.execute(f"INSERT INTO {t} (name) VALUES (%s) RETURNING id", (n,)).fetchone()[0]
        for n in ("a", "b", "c")
    ]
    assert ids == [1, 2, 3]
    # an explicit large id is accepted, and ids keep working after it
    aconn.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (2**40, "big"))
    assert aconn.execute(f"SELECT name FROM {t} WHERE id = %s", (2**40,)).fetchone() == ("big",)


def test_returning_in_transaction_then_rollback(conn, db):
    t = db.table()
    rid = conn.execute(f"INSERT INTO {t} (name) VALUES ('x') RETURNING id").fetchone()[0]
    assert rid == 1
    assert conn.execute(f"SELECT name FROM {t} WHERE id = %s", (rid,)).fetchone() == ("x",)
    conn.rollback()
    assert count(conn, t) == 0


# ---------------------------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------------------------


def test_commit_visible_from_second_connection(conn, db):
    t = db.table()
    other = db.connect(autocommit=True)
    assert conn.autocommit is False
    assert conn.info.transaction_status == TransactionStatus.IDLE
    conn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("committed",))
    assert conn.info.transaction_status == TransactionStatus.INTRANS
    # seen inside its own transaction, not yet by anybody else
    assert count(conn, t) == 1
    assert count(other, t) == 0
    conn.commit()
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert other.execute(f"SELECT name FROM {t}").fetchall() == [("committed",)]
    # and by a brand-new connection
    fresh = db.connect()
    assert count(fresh, t) == 1


def test_rollback_discards(conn, db):
    t = db.table()
    other = db.connect(autocommit=True)
    conn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("gone",))
    conn.execute(f"INSERT INTO {t} (name) VALUES ('gone too')")
    assert count(conn, t) == 2
    conn.rollback()
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert count(conn, t) == 0
    assert count(other, t) == 0


def test_update_and_delete_rolled_back(conn, db):
    t = db.table()
    conn.execute(f"INSERT INTO {t} (name, score) VALUES ('a', 1), ('b', 2)")
    conn.commit()
    conn.execute(f"UPDATE {t} SET score = 100")
    conn.execute(f"DELETE FROM {t} WHERE name = 'a'")
    conn.rollback()
    assert conn.execute(f"SELECT name, score FROM {t} ORDER BY id").fetchall() == [
        ("a", 1),
        ("b", 2),
    ]


def test_several_transactions_on_one_connection(conn, db):
    t = db.table()
    other = db.connect(autocommit=True)
    conn.execute(f"INSERT INTO {t} (name) VALUES ('one')")
    conn.commit()
    conn.execute(f"INSERT INTO {t} (name) VALUES ('two')")
    conn.rollback()
    conn.execute(f"INSERT INTO {t} (name) VALUES ('three')")
    conn.commit()
    assert [r[0] for r in other.execute(f"SELECT name FROM {t} ORDER BY id")] == ["one", "three"]


def test_transaction_block_commits(aconn, db):
    t = db.table()
    other = db.connect(autocommit=True)
    with aconn.transaction():
        aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("a",))
        aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("b",))
        assert aconn.info.transaction_status == TransactionStatus.INTRANS
        assert count(other, t) == 0
    assert aconn.info.transaction_status == TransactionStatus.IDLE
    assert count(other, t) == 2


def test_transaction_block_rolled_back_by_exception(aconn, db):
    t = db.table()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with aconn.transaction():
            aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("a",))
            assert count(aconn, t) == 1
            raise Boom()
    assert aconn.info.transaction_status == TransactionStatus.IDLE
    assert count(aconn, t) == 0


def test_transaction_block_rolled_back_by_sql_error(aconn, db):
    t = db.table("id INTEGER PRIMARY KEY, name TEXT")
    with pytest.raises(errors.UniqueViolation):
        with aconn.transaction():
            aconn.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (1, "a"))
            aconn.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (1, "dup"))
    assert count(aconn, t) == 0
    assert aconn.execute("SELECT 1").fetchone() == (1,)


def test_transaction_block_in_non_autocommit_mode(conn, db):
    t = db.table()
    with conn.transaction():
        conn.execute(f"INSERT INTO {t} (name) VALUES ('kept')")
    # the block committed: a rollback afterwards does not undo it
    conn.rollback()
    assert count(conn, t) == 1


def test_nested_transaction_blocks_use_savepoints(aconn, db):
    t = db.table()
    with aconn.transaction():
        aconn.execute(f"INSERT INTO {t} (name) VALUES ('outer')")
        with pytest.raises(ValueError):
            with aconn.transaction():
                aconn.execute(f"INSERT INTO {t} (name) VALUES ('inner, rolled back')")
                raise ValueError()
        with aconn.transaction():
            aconn.execute(f"INSERT INTO {t} (name) VALUES ('inner, kept')")
    assert [r[0] for r in aconn.execute(f"SELECT name FROM {t} ORDER BY id")] == [
        "outer",
        "inner, kept",
    ]


def test_connection_context_manager_commits_on_exit(db):
    t = db.table()
    with psycopg.connect(DSN, connect_timeout=CONNECT_TIMEOUT) as c:
        c.execute(f"INSERT INTO {t} (name) VALUES ('ctx')")
    assert c.closed
    with pytest.raises(RuntimeError):
        with psycopg.connect(DSN, connect_timeout=CONNECT_TIMEOUT) as c:
            c.execute(f"INSERT INTO {t} (name) VALUES ('ctx, rolled back')")
            raise RuntimeError()
    check = db.connect()
    assert [r[0] for r in check.execute(f"SELECT name FROM {t}")] == ["ctx"]


@pytest.mark.parametrize("how", ["close", "drop_socket"])
def test_connection_closed_without_commit_leaves_nothing(db, how):
    t = db.table("id INTEGER PRIMARY KEY, name TEXT")
    c = psycopg.connect(DSN, connect_timeout=CONNECT_TIMEOUT)
    c.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (1, "uncommitted"))
    c.execute(f"UPDATE {t} SET name = 'still uncommitted'")
    if how == "close":
        c.close()  # psycopg sends Terminate; no COMMIT
    else:
        # The client vanishes without a Terminate message.
        s = socket.socket(fileno=os.dup(c.fileno()))
        s.shutdown(socket.SHUT_RDWR)
        s.close()
        c.close()
    other = db.connect(autocommit=True)
    assert count(other, t) == 0
    # The abandoned transaction must not keep the table (or the key) locked: the same key
    # can be written and committed by somebody else.
    other.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (1, "after"))
    assert other.execute(f"SELECT name FROM {t}").fetchall() == [("after",)]


def test_autocommit_mode(aconn, db):
    t = db.table()
    other = db.connect(autocommit=True)
    assert aconn.autocommit is True
    aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("auto",))
    assert aconn.info.transaction_status == TransactionStatus.IDLE
    # visible elsewhere at once, without any commit
    assert other.execute(f"SELECT name FROM {t}").fetchall() == [("auto",)]
    # rollback() in autocommit mode is a no-op: the row stays
    aconn.rollback()
    assert count(other, t) == 1
    aconn.execute(f"UPDATE {t} SET name = %s", ("changed",))
    assert other.execute(f"SELECT name FROM {t}").fetchall() == [("changed",)]
    aconn.execute(f"DELETE FROM {t}")
    assert count(other, t) == 0


def test_switch_autocommit_on_existing_connection(conn, db):
    t = db.table()
    other = db.connect(autocommit=True)
    conn.autocommit = True
    conn.execute(f"INSERT INTO {t} (name) VALUES ('a')")
    assert count(other, t) == 1
    conn.autocommit = False
    conn.execute(f"INSERT INTO {t} (name) VALUES ('b')")
    assert count(other, t) == 1
    conn.commit()
    assert count(other, t) == 2


def test_explicit_begin_commit_in_autocommit_mode(aconn, db):
    t = db.table()
    other = db.connect(autocommit=True)
    aconn.execute("BEGIN")
    assert aconn.info.transaction_status == TransactionStatus.INTRANS
    aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("x",))
    assert count(other, t) == 0
    aconn.execute("COMMIT")
    assert aconn.info.transaction_status == TransactionStatus.IDLE
    assert count(other, t) == 1
    aconn.execute("BEGIN")
    aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("y",))
    aconn.execute("ROLLBACK")
    assert count(other, t) == 1


def test_error_puts_transaction_in_failed_state(conn, db):
    t = db.table()
    conn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("before error",))
    with pytest.raises(errors.UndefinedTable):
        conn.execute(f"SELECT * FROM no_such_table_{secrets.token_hex(4)}")
    assert conn.info.transaction_status == TransactionStatus.INERROR
    # every further statement is refused until the rollback, with or without parameters
    with pytest.raises(errors.InFailedSqlTransaction) as ei:
        conn.execute("SELECT 1")
    assert ei.value.sqlstate == "25P02"
    with pytest.raises(errors.InFailedSqlTransaction):
        conn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("refused",))
    assert conn.info.transaction_status == TransactionStatus.INERROR
    conn.rollback()
    assert conn.info.transaction_status == TransactionStatus.IDLE
    # the connection works again, and the insert made before the error is gone
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert count(conn, t) == 0
    conn.commit()


def test_commit_of_failed_transaction_rolls_back(conn, db):
    t = db.table("id INTEGER PRIMARY KEY, name TEXT")
    conn.execute(f"INSERT INTO {t} (id, name) VALUES (1, 'a')")
    with pytest.raises(errors.UniqueViolation):
        conn.execute(f"INSERT INTO {t} (id, name) VALUES (1, 'b')")
    # PostgreSQL answers COMMIT of a failed transaction with ROLLBACK; psycopg does not raise.
    conn.commit()
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert count(conn, t) == 0


# ---------------------------------------------------------------------------------------------
# NULLs, blobs, unicode, empty strings, booleans
# ---------------------------------------------------------------------------------------------


def test_nulls_in_every_column_type(aconn, db):
    t = db.table()
    aconn.execute(
        f"INSERT INTO {t} (name, score, big, ratio, data, flag) VALUES (%s, %s, %s, %s, %s, %s)",
        (None, None, None, None, None, None),
    )
    aconn.execute(
        f"INSERT INTO {t} (name, score, big, ratio, data, flag) "
        "VALUES (NULL, NULL, NULL, NULL, NULL, NULL)"
    )
    aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("only name",))
    rows = aconn.execute(f"SELECT name, score, big, ratio, data, flag FROM {t} ORDER BY id").fetchall()
    assert rows == [
        (None,) * 6,
        (None,) * 6,
        ("only name",) + (None,) * 5,
    ]
    assert count(aconn, t, "score IS NULL AND data IS NULL AND flag IS NULL") == 3
    assert count(aconn, t, "name IS NOT NULL") == 1
    # NULL never equals anything, not even a NULL parameter
    assert count(aconn, t, "name = %s", (None,)) == 0
    # updating to NULL and back
    aconn.execute(f"UPDATE {t} SET name = %s, score = %s WHERE name = %s", (None, 3, "only name"))
    assert count(aconn, t, "name IS NULL") == 3
    assert count(aconn, t, "score = %s", (3,)) == 1


def test_blobs(aconn, db):
    t = db.table()
    rng = random.Random(1234)
    blobs = [
        b"",
        b"\x00",
        b"\x00\x00\x00",
        b"a\x00b\x00",
        bytes(range(256)),
        bytes(range(255, -1, -1)),
        b"\\x41 not hex",  # looks like bytea's hex escape
        b"'\"\\",
        rng.randbytes(1024 * 1024),  # 1 MiB
    ]
    ids = []
    for b in blobs:
        cur = aconn.execute(f"INSERT INTO {t} (data) VALUES (%s) RETURNING id", (b,))
        ids.append(cur.fetchone()[0])
    got = [r[0] for r in aconn.execute(f"SELECT data FROM {t} ORDER BY id")]
    assert all(type(b) is bytes for b in got)
    assert [len(b) for b in got] == [len(b) for b in blobs]
    assert got == blobs
    # bytearray and memoryview parameters are sent as bytea too
    aconn.execute(f"INSERT INTO {t} (data) VALUES (%s)", (bytearray(b"\x00ba"),))
    aconn.execute(f"INSERT INTO {t} (data) VALUES (%s)", (memoryview(b"\x00mv"),))
    assert count(aconn, t, "data = %s", (b"\x00ba",)) == 1
    assert count(aconn, t, "data = %s", (b"\x00mv",)) == 1
    # lookup by blob, and empty blob is not NULL
    assert aconn.execute(f"SELECT id FROM {t} WHERE data = %s", (bytes(range(256)),)).fetchall() == [
        (ids[4],)
    ]
    assert count(aconn, t, "data = %s", (b"",)) == 1
    assert count(aconn, t, "data IS NULL") == 0


def test_unicode_text(aconn, db):
    t = db.table()
    texts = [
        "emoji 😀👍🏽🇫🇷👨‍👩‍👧",
        "CJK 漢字 かな カナ 한국어",
        "combining e\u0301 a\u0308 n\u0303",
        "RTL שלום مرحبا",
        "quotes ' '' \" `backtick` and backslashes \\ \\\\ \\n \\x00 \\'",
        "sql-ish %s %% $1 ? ; -- comment /* c */ E'x'",
        "tab\tnewline\ncr\r end",
        "\u00a0nbsp \u200bzero-width \ufeffbom",
        "max BMP \uffff and astral \U0010ffff",
    ]
    for s in texts:
        aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", (s,))
    got = [r[0] for r in aconn.execute(f"SELECT name FROM {t} ORDER BY id")]
    assert got == texts
    for s in texts:
        assert count(aconn, t, "name = %s", (s,)) == 1
    # unicode as literals in the SQL text
    aconn.execute(f"INSERT INTO {t} (name) VALUES ('literal 😀 漢字 e\u0301 it''s')")
    assert aconn.execute(f"SELECT name FROM {t} WHERE name LIKE 'literal%'").fetchone() == (
        "literal 😀 漢字 e\u0301 it's",
    )


def test_empty_string_is_not_null(aconn, db):
    t = db.table()
    aconn.execute(f"INSERT INTO {t} (name, score) VALUES (%s, 1)", ("",))
    aconn.execute(f"INSERT INTO {t} (name, score) VALUES (%s, 2)", (None,))
    aconn.execute(f"INSERT INTO {t} (name, score) VALUES ('', 3)")
    assert aconn.execute(f"SELECT name FROM {t} ORDER BY id").fetchall() == [("",), (None,), ("",)]
    assert count(aconn, t, "name = ''") == 2
    assert count(aconn, t, "name = %s", ("",)) == 2
    assert count(aconn, t, "name IS NULL") == 1


def test_boolean_round_trip(aconn, db):
    t = db.table()
    for v in (True, False, None):
        aconn.execute(f"INSERT INTO {t} (flag) VALUES (%s)", (v,))
    aconn.execute(f"INSERT INTO {t} (flag) VALUES (TRUE), (FALSE)")
    got = [r[0] for r in aconn.execute(f"SELECT flag FROM {t} ORDER BY id")]
    # A column declared BOOLEAN comes back as Python bool (the server must describe it as
    # bool, OID 16, and send 't'/'f'), not as 1/0.
    assert got == [True, False, None, True, False]
    assert [type(v) for v in got] == [bool, bool, type(None), bool, bool]


def test_boolean_filters(aconn, db):
    t = db.table()
    aconn.execute(
        f"INSERT INTO {t} (name, flag) VALUES (%s, %s), (%s, %s), (%s, %s)",
        ("yes", True, "no", False, "null", None),
    )
    # a bool parameter compares with what a bool parameter stored
    assert aconn.execute(f"SELECT name FROM {t} WHERE flag = %s", (True,)).fetchall() == [("yes",)]
    assert aconn.execute(f"SELECT name FROM {t} WHERE flag = %s", (False,)).fetchall() == [("no",)]
    # and with the TRUE/FALSE literals, and as a bare condition
    assert aconn.execute(f"SELECT name FROM {t} WHERE flag = TRUE").fetchall() == [("yes",)]
    assert aconn.execute(f"SELECT name FROM {t} WHERE NOT flag").fetchall() == [("no",)]
    assert aconn.execute(f"SELECT name FROM {t} WHERE flag").fetchall() == [("yes",)]
    cur = aconn.execute(f"UPDATE {t} SET flag = %s WHERE flag IS NULL", (True,))
    assert cur.rowcount == 1
    assert count(aconn, t, "flag = %s", (True,)) == 2


# ---------------------------------------------------------------------------------------------
# Errors and SQLSTATEs
# ---------------------------------------------------------------------------------------------


def _still_works(conn: psycopg.Connection, table: str | None = None) -> None:
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert conn.execute("SELECT %s", (42,)).fetchone() == (42,)
    if table:
        before = count(conn, table, "name = %s", ("after error",))
        conn.execute(f"INSERT INTO {table} (name) VALUES (%s)", ("after error",))
        assert count(conn, table, "name = %s", ("after error",)) == before + 1


def test_unique_violation(aconn, db):
    t = db.table("id INTEGER PRIMARY KEY, name TEXT UNIQUE")
    aconn.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (1, "a"))
    with pytest.raises(errors.UniqueViolation) as ei:
        aconn.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (1, "b"))
    assert ei.value.sqlstate == "23505"
    assert ei.value.diag.sqlstate == "23505"
    assert isinstance(ei.value, psycopg.IntegrityError)
    # duplicate in a UNIQUE (non-key) column, with literal values (simple query protocol)
    with pytest.raises(errors.UniqueViolation) as ei:
        aconn.execute(f"INSERT INTO {t} (id, name) VALUES (2, 'a')")
    assert ei.value.sqlstate == "23505"
    # via UPDATE
    aconn.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (3, "c"))
    with pytest.raises(errors.UniqueViolation):
        aconn.execute(f"UPDATE {t} SET id = %s WHERE id = %s", (1, 3))
    assert aconn.execute(f"SELECT id, name FROM {t} ORDER BY id").fetchall() == [(1, "a"), (3, "c")]
    aconn.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (4, "after error"))
    _still_works(aconn)


def test_unique_violation_on_serial_primary_key(aconn, db):
    t = db.table()
    rid = aconn.execute(f"INSERT INTO {t} (name) VALUES ('a') RETURNING id").fetchone()[0]
    with pytest.raises(errors.UniqueViolation):
        aconn.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (rid, "dup"))
    _still_works(aconn, t)


def test_not_null_violation(aconn, db):
    t = db.table("id SERIAL PRIMARY KEY, name TEXT NOT NULL")
    with pytest.raises(errors.NotNullViolation) as ei:
        aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", (None,))
    assert ei.value.sqlstate == "23502"
    assert isinstance(ei.value, psycopg.IntegrityError)
    with pytest.raises(errors.NotNullViolation):
        aconn.execute(f"INSERT INTO {t} (name) VALUES (NULL)")
    aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("ok",))
    with pytest.raises(errors.NotNullViolation):
        aconn.execute(f"UPDATE {t} SET name = %s", (None,))
    assert aconn.execute(f"SELECT name FROM {t}").fetchall() == [("ok",)]
    _still_works(aconn, t)


def test_syntax_error(aconn, db):
    t = db.table()
    with pytest.raises(errors.SyntaxError) as ei:
        aconn.execute("SELEC 1")  # simple query protocol
    assert ei.value.sqlstate == "42601"
    assert isinstance(ei.value, psycopg.ProgrammingError)
    _still_works(aconn, t)
    with pytest.raises(errors.SyntaxError) as ei:
        aconn.execute(f"INSERT INTO {t} (name) VALUES (%s", ("x",))  # extended protocol
    assert ei.value.sqlstate == "42601"
    _still_works(aconn, t)


def test_undefined_table(aconn, db):
    t = db.table()
    missing = f"no_such_table_{secrets.token_hex(4)}"
    with pytest.raises(errors.UndefinedTable) as ei:
        aconn.execute(f"SELECT * FROM {missing}")
    assert ei.value.sqlstate == "42P01"
    _still_works(aconn, t)
    with pytest.raises(errors.UndefinedTable) as ei:
        aconn.execute(f"INSERT INTO {missing} (name) VALUES (%s)", ("x",))
    assert ei.value.sqlstate == "42P01"
    _still_works(aconn, t)


def test_undefined_column(aconn, db):
    t = db.table()
    with pytest.raises(errors.UndefinedColumn) as ei:
        aconn.execute(f"SELECT no_such_column FROM {t}")
    assert ei.value.sqlstate == "42703"
    _still_works(aconn, t)
    with pytest.raises(errors.UndefinedColumn) as ei:
        aconn.execute(f"SELECT name FROM {t} WHERE no_such_column = %s", (1,))
    assert ei.value.sqlstate == "42703"
    _still_works(aconn, t)
    with pytest.raises(errors.UndefinedColumn):
        aconn.execute(f"INSERT INTO {t} (no_such_column) VALUES (%s)", (1,))
    _still_works(aconn, t)


def test_error_message_is_useful(aconn, db):
    t = db.table("id INTEGER PRIMARY KEY")
    aconn.execute(f"INSERT INTO {t} (id) VALUES (1)")
    with pytest.raises(errors.UniqueViolation) as ei:
        aconn.execute(f"INSERT INTO {t} (id) VALUES (1)")
    assert ei.value.diag.severity == "ERROR"
    assert ei.value.diag.message_primary
    assert str(ei.value)


def test_errors_in_a_row_then_work(aconn, db):
    t = db.table("id INTEGER PRIMARY KEY, name TEXT NOT NULL")
    for _ in range(3):
        with pytest.raises(errors.SyntaxError):
            aconn.execute("SELEC 1")
        with pytest.raises(errors.UndefinedTable):
            aconn.execute("SELECT * FROM no_such_table_zzz WHERE x = %s", (1,))
        with pytest.raises(errors.NotNullViolation):
            aconn.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (1, None))
    aconn.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (1, "fine"))
    assert aconn.execute(f"SELECT name FROM {t}").fetchall() == [("fine",)]


# ---------------------------------------------------------------------------------------------
# Prepared statements, many parameter sets
# ---------------------------------------------------------------------------------------------


def test_prepared_statement_repeated(aconn, db):
    t = db.table()
    insert = f"INSERT INTO {t} (name, score, ratio) VALUES (%s, %s, %s) RETURNING id"
    ids = [
        aconn.execute(insert, (f"p{i}", i, i / 4), prepare=True).fetchone()[0] for i in range(20)
    ]
    assert ids == list(range(1, 21))
    select = f"SELECT name, score, ratio FROM {t} WHERE id = %s"
    for i in range(20):
        assert aconn.execute(select, (i + 1,), prepare=True).fetchone() == (f"p{i}", i, i / 4)
    update = f"UPDATE {t} SET score = score + %s WHERE score < %s"
    assert aconn.execute(update, (100, 10), prepare=True).rowcount == 10
    assert aconn.execute(update, (100, 10), prepare=True).rowcount == 0
    # statement with no parameters, prepared
    for _ in range(3):
        assert aconn.execute(f"SELECT count(*) FROM {t}", prepare=True).fetchone() == (20,)


def test_prepared_statement_in_transaction(conn, db):
    t = db.table()
    sql = f"INSERT INTO {t} (name) VALUES (%s)"
    for i in range(5):
        conn.execute(sql, (f"a{i}",), prepare=True)
    conn.rollback()
    # prepared statements survive a rollback
    for i in range(5):
        conn.execute(sql, (f"b{i}",), prepare=True)
    conn.commit()
    assert [r[0] for r in conn.execute(f"SELECT name FROM {t} ORDER BY id")] == [
        f"b{i}" for i in range(5)
    ]
    conn.commit()


def test_prepare_everything(db):
    t = db.table()
    c = db.connect(autocommit=True)
    c.prepared_threshold = 0  # every statement with the extended protocol is prepared
    for i in range(10):
        c.execute(f"INSERT INTO {t} (name, score) VALUES (%s, %s)", (f"x{i}", i))
        assert c.execute(f"SELECT name FROM {t} WHERE score = %s", (i,)).fetchone() == (f"x{i}",)
    c.prepared_threshold = None  # never prepare
    assert c.execute(f"SELECT count(*) FROM {t} WHERE score >= %s", (5,)).fetchone() == (5,)


def test_cursor_execute_many_parameter_sets(aconn, db):
    t = db.table()
    rng = random.Random(99)
    expected = {}
    with aconn.cursor() as cur:
        for i in range(200):
            name = f"row-{i}-{rng.choice(['α', 'β', '😀', '', 'x'])}"
            score = rng.randint(-(2**31), 2**31 - 1)
            big = rng.randint(-(2**62), 2**62)
            ratio = rng.uniform(-1e6, 1e6)
            data = rng.randbytes(rng.randint(0, 64))
            flag = rng.choice([True, False, None])
            # mix NULLs in, which changes the parameter types psycopg sends
            if i % 7 == 0:
                score = None
            if i % 11 == 0:
                ratio = None
            cur.execute(
                f"INSERT INTO {t} (name, score, big, ratio, data, flag) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (name, score, big, ratio, data, flag),
            )
            expected[cur.fetchone()[0]] = (name, score, big, ratio, data, flag)
        for rid, row in expected.items():
            cur.execute(f"SELECT name, score, big, ratio, data, flag FROM {t} WHERE id = %s", (rid,))
            assert cur.fetchone() == row
    assert count(aconn, t) == 200


def test_same_query_different_param_types(aconn, db):
    t = db.table()
    sql = f"INSERT INTO {t} (big) VALUES (%s)"
    # psycopg picks int2/int4/int8 by magnitude, so one statement gets different param OIDs
    values = [1, 40000, 2**40, None, -3, 2**62]
    for _ in range(3):
        for v in values:
            aconn.execute(sql, (v,))
    got = [r[0] for r in aconn.execute(f"SELECT big FROM {t} ORDER BY id")]
    assert got == values * 3


# ---------------------------------------------------------------------------------------------
# SET / SHOW, Scribe's commit mode
# ---------------------------------------------------------------------------------------------


def test_set_and_show_application_name(aconn):
    name = f"scribe_test_{secrets.token_hex(3)}"
    aconn.execute(f"SET application_name = '{name}'")
    assert aconn.execute("SHOW application_name").fetchone() == (name,)
    aconn.execute("SET application_name TO 'second'")
    assert aconn.execute("SHOW application_name").fetchone()[0] == "second"


def test_set_is_per_connection(db):
    a = db.connect(autocommit=True)
    b = db.connect(autocommit=True)
    a.execute("SET application_name = 'conn_a'")
    b.execute("SET application_name = 'conn_b'")
    assert a.execute("SHOW application_name").fetchone() == ("conn_a",)
    assert b.execute("SHOW application_name").fetchone() == ("conn_b",)


def test_set_scribe_commit(aconn, db):
    # PostgreSQL accepts any dotted custom setting, so this runs on both; Scribe gives it meaning.
    t = db.table()
    for mode in ("sync", "semi-sync", "async", "sync"):
        aconn.execute(f"SET scribe.commit = '{mode}'")
        assert aconn.execute("SHOW scribe.commit").fetchone() == (mode,)
    # writes still work (on Scribe, each one now waits for the replicas to apply it)
    aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("synced",))
    with aconn.transaction():
        aconn.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("synced in txn",))
    assert count(aconn, t) == 2


@scribe_only
def test_set_scribe_commit_rejects_unknown_mode(aconn):
    aconn.execute("SET scribe.commit = 'async'")
    with pytest.raises(psycopg.Error):
        aconn.execute("SET scribe.commit = 'bogus'")
    assert aconn.execute("SHOW scribe.commit").fetchone() == ("async",)
    _still_works(aconn)


# ---------------------------------------------------------------------------------------------
# Replica (Scribe-specific; skipped unless SCRIBE_PG_REPLICA_DSN is set)
# ---------------------------------------------------------------------------------------------


def _wait_on_replica(replica: psycopg.Connection, table: str, expected: int) -> bool:
    """Wait until `table` exists on the replica with `expected` rows; False on timeout."""

    def seen() -> bool:
        try:
            return count(replica, table) == expected
        except errors.UndefinedTable:
            # The CREATE TABLE has not been replicated yet. (In non-autocommit mode the error
            # aborted the transaction: end it before trying again.)
            if not replica.autocommit:
                replica.rollback()
            return False

    return wait_for(seen)


@needs_replica
def test_replica_reads(db):
    t = db.table()
    primary = db.connect(autocommit=True)
    replica = db.connect(REPLICA_DSN, autocommit=True)
    assert replica.execute("SELECT 1").fetchone() == (1,)
    primary.execute(f"INSERT INTO {t} (name, score) VALUES (%s, %s)", ("from primary", 7))
    assert _wait_on_replica(replica, t, 1), "write on the primary never reached the replica"
    assert replica.execute(f"SELECT name, score FROM {t} WHERE score = %s", (7,)).fetchall() == [
        ("from primary", 7)
    ]


@needs_replica
def test_replica_autocommit_write_read_your_writes(db):
    t = db.table()
    replica = db.connect(REPLICA_DSN, autocommit=True)
    assert _wait_on_replica(replica, t, 0), "CREATE TABLE never reached the replica"
    rid = replica.execute(
        f"INSERT INTO {t} (name) VALUES (%s) RETURNING id", ("via replica",)
    ).fetchone()[0]
    assert rid == 1
    # read-your-writes: visible at once on the same replica connection
    assert replica.execute(f"SELECT id, name FROM {t}").fetchall() == [(1, "via replica")]
    cur = replica.execute(f"UPDATE {t} SET name = %s WHERE id = %s", ("updated", rid))
    assert cur.rowcount == 1
    assert replica.execute(f"SELECT name FROM {t} WHERE id = %s", (rid,)).fetchone() == ("updated",)
    # and it was committed on the primary
    primary = db.connect(autocommit=True)
    assert primary.execute(f"SELECT name FROM {t}").fetchall() == [("updated",)]


@needs_replica
def test_replica_transaction_commit_and_rollback(db):
    t = db.table()
    replica = db.connect(REPLICA_DSN)  # default mode: explicit transactions
    assert _wait_on_replica(replica, t, 0), "CREATE TABLE never reached the replica"
    replica.commit()
    replica.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("t1",))
    replica.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("t2",))
    assert count(replica, t) == 2  # sees its own uncommitted writes
    replica.commit()
    assert [r[0] for r in replica.execute(f"SELECT name FROM {t} ORDER BY id")] == ["t1", "t2"]
    replica.commit()
    primary = db.connect(autocommit=True)
    assert count(primary, t) == 2

    replica.execute(f"INSERT INTO {t} (name) VALUES (%s)", ("rolled back",))
    replica.rollback()
    assert count(replica, t) == 2
    replica.commit()
    assert count(primary, t) == 2

    with replica.transaction():
        replica.execute(f"DELETE FROM {t} WHERE name = %s", ("t1",))
    assert [r[0] for r in replica.execute(f"SELECT name FROM {t}")] == ["t2"]
    replica.commit()
    assert [r[0] for r in primary.execute(f"SELECT name FROM {t}")] == ["t2"]


@needs_replica
def test_replica_errors(db):
    t = db.table("id INTEGER PRIMARY KEY, name TEXT")
    replica = db.connect(REPLICA_DSN, autocommit=True)
    assert _wait_on_replica(replica, t, 0), "CREATE TABLE never reached the replica"
    replica.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (1, "a"))
    with pytest.raises(errors.UniqueViolation):
        replica.execute(f"INSERT INTO {t} (id, name) VALUES (%s, %s)", (1, "dup"))
    with pytest.raises(errors.UndefinedTable):
        replica.execute("SELECT * FROM no_such_table_zzz")
    _still_works(replica)
    assert replica.execute(f"SELECT name FROM {t}").fetchall() == [("a",)]


# --------------------------------------------------------------------------------------------
# Cancel requests


def test_cancel_interrupts_a_long_read(aconn):
    """A cancel request (what psql sends on Ctrl-C) ends a running read with 57014, promptly,
    and the connection goes on."""
    import threading

    long_read = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 500000000) "
        "SELECT count(*) FROM c"
    )
    timer = threading.Timer(0.5, aconn.cancel_safe)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(errors.QueryCanceled):
            aconn.execute(long_read)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10, "the cancel did not end the read promptly"
    assert aconn.execute("SELECT 1").fetchone()[0] == 1
