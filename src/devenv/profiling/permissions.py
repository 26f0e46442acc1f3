"""Whether this process may attach a sampler (py-spy, memray) to its services' processes,
and if not, the fix. A pure decision on injected facts; `facts()` reads them from /proc."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CAP_SYS_PTRACE = 19
YAMA = Path("/proc/sys/kernel/yama/ptrace_scope")
CONTAINER_MARKS = (Path("/.dockerenv"), Path("/run/.containerenv"))


@dataclass(frozen=True)
class Facts:
    euid: int
    cap_sys_ptrace: bool
    yama_scope: int | None  # None: no Yama (any process of the same user may be traced)
    in_container: bool


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    fix: str = ""


def decide(facts: Facts) -> Verdict:
    """Attaching to a sibling process (the sampler is not the service's parent)."""
    who = "root" if facts.euid == 0 else f"uid {facts.euid}"
    cap = "with CAP_SYS_PTRACE" if facts.cap_sys_ptrace else "without CAP_SYS_PTRACE"
    if facts.yama_scope == 3:
        return Verdict(False, "kernel.yama.ptrace_scope is 3: attaching is disabled for "
                       "everyone until the next reboot", "reboot, and do not set "
                       "kernel.yama.ptrace_scope to 3 (e.g. in /etc/sysctl.d/)")
    if facts.cap_sys_ptrace:
        return Verdict(True, f"may attach to services ({who} {cap})")
    if facts.in_container:
        return Verdict(False, f"running in a container {cap}: the kernel forbids attaching "
                       "a profiler", "run the container with --cap-add SYS_PTRACE (Docker, "
                       "Podman) or add SYS_PTRACE to securityContext.capabilities (Kubernetes)")
    if facts.yama_scope in (1, 2):
        need = "only a process's parent" if facts.yama_scope == 1 else "only CAP_SYS_PTRACE"
        return Verdict(False, f"kernel.yama.ptrace_scope is {facts.yama_scope} ({need} may "
                       f"attach) and devenv runs as {who} {cap}",
                       "sudo sh -c 'echo 0 > /proc/sys/kernel/yama/ptrace_scope' (until the "
                       "next reboot), or run devenv with sudo")
    return Verdict(True, f"may attach to services ({who}'s own processes)")


def facts() -> Facts:
    try:
        scope: int | None = int(YAMA.read_text().strip())
    except (OSError, ValueError):
        scope = None
    return Facts(euid=os.geteuid(), cap_sys_ptrace=_has_cap(CAP_SYS_PTRACE),
                 yama_scope=scope, in_container=_in_container())


def _has_cap(bit: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def _in_container() -> bool:
    if any(mark.exists() for mark in CONTAINER_MARKS):
        return True
    try:
        text = Path("/proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(word in text for word in ("docker", "kubepods", "containerd", "libpod", "lxc"))
