"""A throw-away PostgreSQL server on 127.0.0.1 for tests, from Debian's ``postgresql`` package.

The fixture :func:`postgres_url` starts one in a ``tempfile.mkdtemp`` folder (data, Unix socket
and log; removed afterwards) on a free port with trust authentication, creates a database and
yields its SQLAlchemy URL. The server refuses to run as root, so under root it runs as the
``postgres`` user through ``runuser``. Where no server can start, the test is skipped with
the reason (``-rs`` prints it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASE = "melecole_tune"
_PREFERRED = "15"


def server_binaries() -> Path | None:
    """The ``bin`` folder of the installed PostgreSQL (15 if present, else the newest), or None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if not found:
        return None
    preferred = [b for b in found if b.parent.name == _PREFERRED]
    return preferred[0] if preferred else max(found, key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"{Path(command[command.index('--') + 1] if '--' in command else command[0]).name} "
                           f"exited with {done.returncode}: {detail[-1] if detail else 'no output'}")


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix that runs a server program, and the owner its files need."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
    if shutil.which("runuser") is None:
        pytest.skip("running as root and runuser is missing, so the PostgreSQL server cannot drop privileges")
    return ["runuser", "-u", "postgres", "--"], user.pw_uid, user.pw_gid


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/melecole_tune`` of a server that lives for one test."""
    try:
        import psycopg  # noqa: F401 - SQLAlchemy's default PostgreSQL driver
    except ImportError:
        pytest.skip("the PostgreSQL driver psycopg is not installed (requirements.txt pins psycopg and psycopg-binary)")
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server under /usr/lib/postgresql/*/bin (Debian's postgresql; .ci/run installs it)")
    prefix, uid, gid = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="melecole-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if uid is not None:
        for path in (root, sockets):
            os.chown(path, uid, gid)
    started, port = False, None
    try:
        _run([*prefix, str(binaries / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8",
              "--locale=C", "--no-sync"])
        error = None
        for _ in range(3):  # the free port may be taken by someone else before the server binds it
            port = _free_port()
            try:
                _run([*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                      "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {sockets} -F", "start"])
                started = True
                break
            except RuntimeError as failure:
                error = failure
        if not started:
            raise error
        _run([*prefix, str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE])
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as failure:
        log = root / "server.log"
        hint = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        _stop(prefix, binaries, data, started, root)
        pytest.skip(f"the PostgreSQL server in {binaries} could not start: {failure}"
                    + (f" (server log: {hint[0]})" if hint else ""))
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"
    finally:
        _stop(prefix, binaries, data, started, root)


def _stop(prefix: list[str], binaries: Path, data: Path, started: bool, root: Path) -> None:
    if started:
        subprocess.run([*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=120)
    shutil.rmtree(root, ignore_errors=True)
