"""A throwaway PostgreSQL server on loopback for the tests that share a study through one.

It runs the server binaries that Debian's ``postgresql`` package installs (``.ci/run`` installs
them), as an unprivileged user when the tests run as root (PostgreSQL refuses to run as root).
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
from contextlib import contextmanager
from pathlib import Path


class Unavailable(Exception):
    """No server could be started here; the message says why and what to install."""


def binaries() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if not versions:
        raise Unavailable(
            "no PostgreSQL server binaries (pg_ctl, initdb): install Debian's postgresql "
            "package (.ci/run does)"
        )
    return Path(versions[-1]).parent


def _version(path: str) -> float:
    try:
        return float(Path(path).parts[-3])
    except ValueError:
        return 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server in a fresh folder; yield its admin URL (database ``postgres``); stop it."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("psycopg is not installed: pip install 'fulcrum[postgres]'") from None
    bin_dir = binaries()
    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses root: run it as its own user, or nobody
        for name in ("postgres", "nobody"):
            try:
                user = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if user is None:
            raise Unavailable(
                "running as root and no 'postgres' or 'nobody' user to run the server"
            )
    folder = Path(tempfile.mkdtemp(prefix="fulcrum-pg-"))
    data = folder / "data"
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    env = {**os.environ, "LC_ALL": "C"}
    port = _free_port()
    try:
        done = subprocess.run(
            [
                bin_dir / "initdb",
                "-D",
                data,
                "-U",
                "fulcrum",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=folder,
            **as_user,  # type: ignore[arg-type]
        )
        if done.returncode != 0:
            raise Unavailable(f"initdb failed: {done.stderr.strip()[-300:]}")
        # killed machines' connections linger until the server notices; initdb may size
        # max_connections below 100 on a small machine: room for the tests' bursts
        options = (
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=300"
        )
        started = subprocess.run(
            [
                bin_dir / "pg_ctl",
                "-D",
                data,
                "-l",
                folder / "log",
                "-w",
                "-t",
                "30",
                "-o",
                options,
                "start",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=folder,
            **as_user,  # type: ignore[arg-type]
        )
        if started.returncode != 0:
            log = (folder / "log").read_text()[-300:] if (folder / "log").exists() else ""
            raise Unavailable(f"the server did not start: {started.stderr.strip()[-200:]} {log}")
        try:
            yield f"postgresql://fulcrum@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
                capture_output=True,
                env=env,
                cwd=folder,
                **as_user,  # type: ignore[arg-type]
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def new_database(admin_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``admin_url``; return its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
