"""A throwaway PostgreSQL server from Debian's packages, on a free port, for tests and
benchmarks: `with PostgreSQL() as pg: engine = create_engine(pg.url)`.

initdb and the server refuse to run as root; as root they run as the `postgres` user the
Debian package creates. The data folder is deleted at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

from gateway.testing.mosquitto import free_port


class PostgreSQLError(RuntimeError):
    """PostgreSQL is not installed, or would not start."""


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (/usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise PostgreSQLError("PostgreSQL is not installed (apt-get install postgresql; "
                              "./dev test does it)")
    return Path(found[-1]).parent


class PostgreSQL:
    """One server, one database (`postgres`), trust authentication on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="stationgw-pg-"))
        self.data = self.folder / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self, prefix: str = "db") -> str:
        """Create a database of its own (for one test on a shared server); its URL."""
        from sqlalchemy import create_engine, text  # noqa: PLC0415 (the dispatch side's)

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
        finally:
            admin.dispose()
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostgreSQLError(f"{' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")

    def __enter__(self) -> PostgreSQL:
        self._run(str(bin_dir() / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        return self

    def start(self) -> None:
        """Start the server (again)."""
        self._run(str(bin_dir() / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                  str(self.folder / "server.log"), "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        """Stop the server, cutting its connections (a database outage)."""
        self._run(str(bin_dir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            with contextlib.suppress(PostgreSQLError):  # already stopped
                self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
