"""Real-time tests run alone. A test marked ``realtime`` plays audio against the clock (the
browser playground, the plug-in in a CLAP host, the C host, paced live sessions) and asserts
that it kept up, or compares the machine's speed at two moments (the live capacity measured
at start and while serving); beside a heavy test on the other xdist worker a 2-core machine
cannot keep up, nor stay the same machine. Its thresholds stay as they are; instead, while it
runs (setup, call and teardown) no other test of the run does, and it waits for the running
one to end.

A readers-writer lock across the run's processes (``fcntl.flock`` on two files): every other
test holds the room shared, a real-time test holds it exclusively. The turnstile in front of
the room keeps a waiting real-time test from being overtaken by the other worker's next tests.
Without xdist (``-n 0``) there is nobody to wait for, and nothing is locked."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

MARK = "realtime"
MARKER_HELP = f"{MARK}: timed against the clock; runs while no other test does (tests/realtime.py)"


def lock_paths(run: str) -> tuple[Path, Path]:
    """The turnstile and room files of the xdist run ``run`` (its ``testrunuid``)."""
    base = Path(tempfile.gettempdir()) / f"distill-serve-tests-{run}"
    return base.with_suffix(".turnstile"), base.with_suffix(".room")


def _lock_paths() -> tuple[Path, Path] | None:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    return lock_paths(run) if run else None


def name_the_run(config: pytest.Config) -> None:
    """On an xdist run's controller, fix the run's id before the workers start (xdist makes
    one otherwise), so that :func:`remove_locks` knows its lock files."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", 0):
        return
    if getattr(config.option, "testrunuid", "") is None:
        config.option.testrunuid = uuid.uuid4().hex


def remove_locks(config: pytest.Config) -> None:
    """On the controller, when the run ends: remove its lock files (empty; the workers are
    gone by then). A worker is told by its ``workerinput``, not by the environment: a run
    started from a test inherits its worker's ``PYTEST_XDIST_WORKER``."""
    run = getattr(config.option, "testrunuid", None)
    if run and not hasattr(config, "workerinput"):
        for path in lock_paths(run):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def turn(alone: bool) -> Iterator[None]:
    """Hold the run's room for one test: exclusively when ``alone``, shared otherwise."""
    paths = _lock_paths()
    if paths is None:
        yield
        return
    gate_path, room_path = paths
    with gate_path.open("a") as gate, room_path.open("a") as room:
        fcntl.flock(gate, fcntl.LOCK_EX)
        if alone:
            # Holding the gate, so no other test starts; then wait for the running one to end.
            fcntl.flock(room, fcntl.LOCK_EX)
        else:
            fcntl.flock(gate, fcntl.LOCK_UN)
            fcntl.flock(room, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(room, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
