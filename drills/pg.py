"""A private PostgreSQL cluster for the drills that stop and kill the database."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from drills.common import DrillError, free_port


class PgCluster:
    """A private PostgreSQL cluster (Debian's binaries) on a free loopback port, so that a drill
    can kill and restart it without touching the machine's own server. As root, the server
    runs as the `postgres` user, which owns the data directory."""

    def __init__(self, root: Path) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found and not shutil.which("pg_ctl"):
            raise DrillError("no PostgreSQL binaries (/usr/lib/postgresql/*/bin or pg_ctl)")
        self.bin = found[-1].parent if found else Path(str(shutil.which("pg_ctl"))).parent
        self.dir = root / "pg"
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, limit_s: float = 60) -> None:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        proc = subprocess.run(  # noqa: S603 (fixed PostgreSQL binaries)
            [*as_user, str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=limit_s,
            check=False,
        )
        if proc.returncode != 0:
            raise DrillError(f"{args[0]} {args[1]}: {(proc.stderr or proc.stdout).strip()}")

    def init(self) -> None:
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:
            self.dir.parent.chmod(0o711)  # mkdtemp's 0700 would keep the postgres user out
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run("pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.dir / "pg.log"),
                  "-o", options)  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-w", "-D", str(self.data), "-m", mode)

    def close(self) -> None:
        with contextlib.suppress(DrillError):  # not running
            self.stop("immediate")
