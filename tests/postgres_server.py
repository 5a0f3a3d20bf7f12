"""A private PostgreSQL server on 127.0.0.1 for the tests that need one: a cluster of its own
in a temp dir, started by the test and stopped (and deleted) after it.

It needs Debian's `postgresql` (initdb and pg_ctl on PATH or under /usr/lib/postgresql/*/bin;
`.ci/run` installs it as root) and psycopg (3) for MLflow's SQLAlchemy store. PostgreSQL refuses
to run as root: as root the cluster runs as the `postgres` user (runuser). Where any of this is
missing, `Postgres.start` raises `Unavailable` with a one-line reason for the skip."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.fault_files import free_port

DATABASE = "mlflow"


class Unavailable(Exception):
    """No PostgreSQL server can be started here; the message says why (a skip reason)."""


def _bin_dir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not versions:
        raise Unavailable("no PostgreSQL here (initdb not found; Debian: apt-get install postgresql)")
    return Path(versions[-1]).parent


class Postgres:
    """`start()` -> the SQLAlchemy URL of an empty database; `stop()` kills and deletes it all."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir: Path | None = None
        self.url = f"postgresql://ptflow@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.dir))

    def start(self) -> str:
        try:
            import psycopg  # noqa: F401  (SQLAlchemy 2.1's driver for postgresql:// URLs)
        except ImportError:
            raise Unavailable("psycopg is not installed (pip install 'psycopg[binary]')") from None
        tools = _bin_dir()
        if os.geteuid() == 0 and not shutil.which("runuser"):
            raise Unavailable("running as root without runuser: PostgreSQL will not run as root")
        self.dir = Path(tempfile.mkdtemp(prefix="ptflow-pg-"))   # under /tmp: the postgres user can reach it
        if os.geteuid() == 0:
            try:
                shutil.chown(self.dir, "postgres", "postgres")
            except (LookupError, OSError) as error:
                raise Unavailable(f"no 'postgres' user to run PostgreSQL as ({error})") from None
        data = self.dir / "data"
        steps = [
            [str(tools / "initdb"), "-D", str(data), "-U", "ptflow", "--auth=trust", "-E", "UTF8", "--no-sync"],
            [str(tools / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(self.dir / "server.log"), "-o",
             f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c max_connections=200", "start"],
            [str(tools / "createdb") if (tools / "createdb").exists() else "createdb", "-h", "127.0.0.1", "-p",
             str(self.port), "-U", "ptflow", DATABASE],
        ]
        for argv in steps:
            done = self._run(*argv)
            if done.returncode != 0:
                why = (done.stderr or done.stdout).strip().splitlines()
                self.stop()
                raise Unavailable(f"{Path(argv[0]).name} failed: {why[-1] if why else done.returncode}")
        return self.url

    def stop(self) -> None:
        if self.dir is None:
            return
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            self._run(str(_bin_dir() / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        deadline = time.monotonic() + 30
        while (data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
