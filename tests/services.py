"""Real services for the tests: a Redis that answers (ours on a free port when none
does), the PostgreSQL at 127.0.0.1:5432 when it answers, and fresh databases on it."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def start_redis_server(port: int) -> subprocess.Popen:
    """redis-server from PATH on `port`, persisting nothing; waits until it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH: install it (apt-get install redis-server) or run `make test`")
    workdir = tempfile.mkdtemp(prefix="redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return process


@contextmanager
def running_redis(preferred_url: str) -> Iterator[str]:
    """Yield a Redis URL that answers: `preferred_url` if it does, else our own server."""
    if redis_answers(preferred_url):
        yield preferred_url
        return
    port = free_port()
    process = start_redis_server(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def postgres_answers(url: str) -> bool:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def create_postgres_database(server_url: str, prefix: str = "studio_test") -> str:
    """A new empty database with a unique name on the server of `server_url`; returns its URL.

    Unique names (prefix + 12 hex digits) let test runs and worker tests share one
    server without ever seeing each other's rows.
    """
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _run_on_postgres_db(server, f'CREATE DATABASE "{name}"')
    return server.set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    """DROP DATABASE ... WITH (FORCE): closes the connections a killed worker may have left open."""
    from sqlalchemy.engine import make_url

    database = make_url(url)
    _run_on_postgres_db(database, f'DROP DATABASE IF EXISTS "{database.database}" WITH (FORCE)')


def _run_on_postgres_db(server, statement: str) -> None:
    """Run `statement` outside a transaction on the server's `postgres` database (CREATE/DROP DATABASE)."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(statement)
    finally:
        admin.dispose()


@contextmanager
def fresh_postgres_database(server_url: str, migrate: bool = True) -> Iterator[str]:
    """Yield the URL of a new database (at Alembic head when `migrate`), dropped afterwards."""
    url = create_postgres_database(server_url)
    try:
        if migrate:
            from app.store.migrate import upgrade_database

            upgrade_database(url)
        yield url
    finally:
        drop_postgres_database(url)


def truncate_all(engine) -> None:
    """Empty every table of the studio on a PostgreSQL engine, ids restarting at 1."""
    from sqlalchemy import text
    from sqlmodel import SQLModel

    tables = ", ".join(table.name for table in SQLModel.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
