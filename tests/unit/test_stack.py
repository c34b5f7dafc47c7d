"""`snews-tasks up`: the Procfile, process groups, and the compose file that mirrors them."""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path

import pytest
import yaml

from snews_tasks.entrypoints.localstack import wait_until
from snews_tasks.settings import load_settings
from snews_tasks.entrypoints.process_groups import group_members, stop_group
from snews_tasks.entrypoints.stack import (DEFAULT_PROCFILE, PrefixedOutput, ProcfileEntry,
                                           Stack, StackError, parse_procfile, read_procfile,
                                           select_entries, start_process)

REPO = Path(__file__).resolve().parents[2]
HANG_S = 30.0  # only a hang reaches it


def test_procfile_lines_become_entries_in_order() -> None:
    text = "# roles\n\ningest: workers/ingest --flag\n  beat :  celery beat -s x:y  \n"
    assert parse_procfile(text) == [ProcfileEntry("ingest", "workers/ingest --flag"),
                                    ProcfileEntry("beat", "celery beat -s x:y")]


@pytest.mark.parametrize(("text", "problem"), [
    ("ingest workers/ingest\n", "Procfile:1: expected 'name: command'"),
    ("ok: true\nbad name: x\n", "Procfile:2: process name 'bad name'"),
    ("ingest:\n", "Procfile:1: process 'ingest' has no command"),
    ("a: x\n\na: y\n", "Procfile:3: process 'a' is defined twice"),
    ("# nothing\n", "Procfile: no processes"),
])
def test_procfile_errors_name_the_line(text: str, problem: str) -> None:
    with pytest.raises(StackError, match=re.escape(problem)):
        parse_procfile(text)


def test_only_selects_known_roles_in_procfile_order() -> None:
    entries = parse_procfile("a: x\nb: y\nc: z\n")
    assert [e.name for e in select_entries(entries, "c, a")] == ["a", "c"]
    assert select_entries(entries, None) == entries
    with pytest.raises(StackError, match="unknown process nope; the Procfile has a, b, c"):
        select_entries(entries, "a,nope")


def test_every_procfile_role_has_an_executable_launch_script() -> None:
    for entry in read_procfile(DEFAULT_PROCFILE):
        assert entry.command == f"workers/{entry.name}"
        assert os.access(REPO / "workers" / entry.name, os.X_OK), entry.name


def test_compose_runs_exactly_the_procfile_roles() -> None:
    """The topology lives in the Procfile; docker-compose.yml must not drift from it."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    roles = {entry.name: entry.command for entry in read_procfile(DEFAULT_PROCFILE)}
    role_services = {name: service["command"] for name, service in compose["services"].items()
                     if str(service.get("command", "")).startswith("workers/")}
    assert role_services == roles
    for name in roles:
        service = compose["services"][name]
        assert service["environment"]["SNEWS_MODE"] == "production"
        assert service["restart"] == "unless-stopped"
        assert all(dependency["condition"] in ("service_healthy",
                                               "service_completed_successfully")
                   for dependency in service["depends_on"].values())
    assert compose["services"]["coincidence"]["deploy"]["replicas"] == 2  # a writer, a standby
    assert compose["services"]["flower"]["ports"] == ["127.0.0.1:5555:5555"]


def _output() -> tuple[PrefixedOutput, io.StringIO]:
    buffer = io.StringIO()
    return PrefixedOutput(buffer, width=6), buffer


def test_stop_group_ends_the_process_and_its_children(tmp_path: Path) -> None:
    output, _ = _output()
    running = start_process(ProcfileEntry("sleepy", "sleep 60 & sleep 60 & echo started; wait"),
                            cwd=tmp_path, env=dict(os.environ), output=output)
    wait_until(lambda: len(group_members(running.process.pid)) == 3, HANG_S,
               "the shell and its two children")
    members = group_members(running.process.pid)
    stop_group(running.process, timeout_s=5)
    assert group_members(running.process.pid) == []
    for pid in members:
        assert _gone(pid), pid


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaps (dead all the same)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_stop_group_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    output, buffer = _output()
    running = start_process(ProcfileEntry("stubborn", "trap '' TERM; echo ready; sleep 60"),
                            cwd=tmp_path, env=dict(os.environ), output=output)
    wait_until(lambda: "ready" in buffer.getvalue(), HANG_S, "the trap set")
    stop_group(running.process, timeout_s=0.5)
    assert group_members(running.process.pid) == []


def test_a_process_that_dies_is_started_again_with_growing_pauses(tmp_path: Path) -> None:
    """The supervisor's job: the stack goes on, and a process failing at once is started
    again after 0.5 s, 1 s, 2 s, 4 s, ... (four runs in 6 s: the fifth would come after 7.5)."""
    output, buffer = _output()
    runs = tmp_path / "runs"
    stack = Stack(load_settings("test", environ={}), lambda text: output.line("up", text))
    stack.start_processes([ProcfileEntry("steady", "sleep 60"),
                           ProcfileEntry("flaky", f"echo run >> {runs}; exit 4")],
                          cwd=tmp_path, output=output)
    steady = stack.processes[0].process
    threading.Timer(6.0, stack.stopping.set).start()
    assert stack.watch() == 0
    stack.stop()
    assert runs.read_text().count("run") == 4
    assert steady.poll() is not None and group_members(steady.pid) == []
    lines = buffer.getvalue().splitlines()
    assert [line for line in lines if "starting it again in" in line][:3] == [
        f"up     | flaky exited with status 4 after 0 s; starting it again in {wait} s"
        for wait in ("0.5", "1.0", "2.0")]


def test_with_strict_a_process_that_dies_stops_the_stack(tmp_path: Path) -> None:
    output, buffer = _output()
    stack = Stack(load_settings("test", environ={}), lambda text: output.line("up", text))
    stack.start_processes([ProcfileEntry("steady", "sleep 60"),
                           ProcfileEntry("broken", "echo about to fail; exit 3")],
                          cwd=tmp_path, output=output)
    steady = stack.processes[0].process
    assert stack.watch(strict=True) == 1
    stack.stop()
    assert group_members(steady.pid) == []
    lines = buffer.getvalue().splitlines()
    assert "broken | about to fail" in lines
    assert "up     | broken exited with status 3; stopping the stack" in lines
    assert lines[-2:] == ["up     | broken: stopped", "up     | steady: stopped"]  # reverse order


def test_a_stop_request_ends_watch_with_success(tmp_path: Path) -> None:
    output, _ = _output()
    stack = Stack(load_settings("test", environ={}), lambda text: output.line("up", text))
    stack.start_processes([ProcfileEntry("steady", "sleep 60")], cwd=tmp_path, output=output)
    threading.Timer(0.2, stack.stopping.set).start()  # what the SIGTERM handler does
    assert stack.watch() == 0
    stack.stop()
    assert stack.processes == []
