"""Two clones of a bare remote, each a devenv project, for the config branch and publish
tests: real git, real engines, everything they start stopped at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil

from conftest import FIXTURES, Project, free_ports, procs_in, wait_for

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(cwd: Path, *args: str, input: str | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          env=GIT_ENV, input=input)
    return done.stdout.strip()


def make_clones(tmp: Path, services: str) -> tuple[Project, Project, Path]:
    """Clone A (with `services` under `services:`, a folder per service holding svc.py)
    pushed to a bare remote, and clone B of it; (A, B, remote)."""
    remote = tmp / "remote.git"
    git(tmp, "init", "--bare", "-q", str(remote))
    a = Project(tmp / "a", free_ports(1)[0])
    a.root.mkdir()
    git(a.root, "init", "-q")
    a.services(services)
    for line in services.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            (a.root / line[:-1]).mkdir()
            shutil.copy(FIXTURES / "svc.py", a.root / line[:-1] / "svc.py")
    (a.root / ".gitignore").write_text(".devenv/\n")
    git(a.root, "add", "-A")
    git(a.root, "commit", "-qm", "the project")
    git(a.root, "remote", "add", "origin", str(remote))
    git(a.root, "push", "-q", "origin", "HEAD:refs/heads/main")
    git(tmp, "clone", "-q", "--branch", "main", str(remote), "b")
    return a, Project(tmp / "b", a.ingress_port), remote


@contextlib.contextmanager
def stopped_after(*projects: Project) -> Iterator[None]:
    """Whatever the test did, its engines and services are gone afterwards."""
    try:
        yield
    finally:
        for proj in projects:
            if proj.engine_pid():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proj.devenv("stop", timeout=60)
            pid = proj.engine_pid()
            with contextlib.suppress(psutil.Error):
                engine = psutil.Process(pid) if pid else None
                if engine and "devenv.engine" in " ".join(engine.cmdline()):
                    engine.kill()
        for proj in projects:
            if not wait_for(lambda p=proj: not procs_in(p.root), timeout=10):
                for proc in procs_in(proj.root):
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
                raise AssertionError(f"processes were left running in {proj.root}")
