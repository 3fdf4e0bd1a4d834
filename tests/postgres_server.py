"""A throwaway PostgreSQL server: its own cluster in a temporary folder, on a free loopback
port, with password authentication over TCP (the URLs the tests type carry the password)."""

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

USER, PASSWORD = "expo", "pw-never-printed"
TOOLS = ("initdb", "pg_ctl", "postgres", "createdb")
INSTALL = "apt-get install postgresql (the tests run its initdb, pg_ctl and postgres)"


def server_binaries() -> Optional[Path]:
    """The folder holding initdb, pg_ctl and postgres: on PATH, else Debian's newest."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                    key=lambda path: [int(n) for n in re.findall(r"\d+", path)], reverse=True)
    for pg_ctl in filter(None, [shutil.which("pg_ctl"), *debian]):
        folder = Path(pg_ctl).resolve().parent
        if all((folder / tool).is_file() for tool in TOOLS):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """initdb, start, stop, create databases; ``close()`` stops it and removes its folder."""

    def __init__(self, binaries: Path):
        self.binaries, self.port = binaries, free_port()
        # Not under pytest's tmp folders: those are private to root, and postgres refuses
        # to run as root, so the cluster belongs to the postgres user when tests run as root.
        self.root = Path(tempfile.mkdtemp(prefix="expo-postgres-"))
        self.data = self.root / "data"
        self.as_owner = []
        password_file = self.root / "password"
        password_file.write_text(PASSWORD)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.root, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", self.data, "-U", USER, "--pwfile", password_file, "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8", "--no-sync", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:  # speed over durability: a test cluster
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        self.start()

    def _run(self, tool: str, *args) -> None:
        command = [*self.as_owner, str(self.binaries / tool), *map(str, args)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.root / "server.log"
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}\n"
                               + (log.read_text()[-2000:] if log.exists() else ""))

    def start(self) -> None:
        if (self.data / "postmaster.pid").exists():  # running already
            return
        self._run("pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def stop_command(self) -> str:
        """The shell line that stops this server (for a scorer that stops it mid-search)."""
        return " ".join([*self.as_owner, str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                         "-w", "stop"])

    def database(self, name: str) -> str:
        """A new, empty database; its URL."""
        self._run("createdb", "-h", self.root, "-p", self.port, "-U", USER, name)
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():  # running
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
