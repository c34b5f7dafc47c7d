"""Process groups: every server and worker runs in its own, so stopping it stops its children.

Never by name: only the groups this code started are signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

STOP_TIMEOUT_S = 10.0
KILL_WAIT_S = 5.0  # SIGKILL cannot be ignored; only a process stuck in the kernel is slower


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group. Zombies count as gone: where PID 1 does not reap
    orphans (some containers) they stay in the table, dead, for good."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: signal 0 counts zombies too, the best there is
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        state, _parent, group = stat.rsplit(")", 1)[1].split()[:3]  # the name may hold spaces
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def wait_group_ended(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_group(process: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group `process` leads, SIGKILL what is left after `timeout_s`."""
    signal_group(process.pid, signal.SIGTERM)
    if not wait_group_ended(process.pid, timeout_s):
        signal_group(process.pid, signal.SIGKILL)
        if not wait_group_ended(process.pid, KILL_WAIT_S):
            raise RuntimeError(f"process group {process.pid} survived SIGKILL")
    process.wait()


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def spawn_logged(
    command: list[str], log_path: Path, *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` in a process group of its own, output (both streams) to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
