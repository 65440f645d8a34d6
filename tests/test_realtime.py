"""The suite's own rule (tests/realtime.py): a test marked ``realtime`` runs while no other
test of the run does. Checked on a run of two xdist workers over two generated files, each
test logging when it ran."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from tests import realtime
from tests.conftest import ROOT

CONFTEST = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from tests.conftest import pytest_configure, pytest_runtest_protocol  # noqa: F401
from tests.conftest import pytest_unconfigure  # noqa: F401
"""

TESTS = """
import time
from pathlib import Path

import pytest

def ran(name, seconds):
    t0 = time.time()
    time.sleep(seconds)
    with (Path(__file__).parent / "log").open("a") as log:
        log.write(f"{name} {t0} {time.time()}\\n")
"""

HEAVY = (
    TESTS
    + """
@pytest.mark.parametrize("i", range(6))
def test_heavy(i):
    ran(f"heavy{i}", 0.4)
"""
)

MIXED = (
    TESTS
    + """
@pytest.mark.parametrize("i", range(2))
def test_before(i):
    ran(f"before{i}", 0.2)

@pytest.mark.realtime
def test_clock():
    ran("realtime", 0.8)

@pytest.mark.parametrize("i", range(2))
def test_after(i):
    ran(f"after{i}", 0.2)
"""
)


def test_a_realtime_test_runs_while_no_other_test_does(tmp_path: Path) -> None:
    for name, text in (("conftest.py", CONFTEST), ("test_heavy.py", HEAVY)):
        (tmp_path / name).write_text(text)
    (tmp_path / "test_mixed.py").write_text(MIXED)
    run_id = f"check-{uuid.uuid4().hex}"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadfile",
         "-p", "no:cacheprovider", "-c", "/dev/null", "--rootdir", str(tmp_path), str(tmp_path),
         "--testrunuid", run_id],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert not [p for p in realtime.lock_paths(run_id) if p.exists()]  # removed at the end
    spans = {
        name: (float(t0), float(t1))
        for name, t0, t1 in (line.split() for line in (tmp_path / "log").read_text().splitlines())
    }
    assert len(spans) == 11, spans
    start, end = spans.pop("realtime")
    overlapping = [name for name, (t0, t1) in spans.items() if t0 < end and t1 > start]
    assert not overlapping, (start, end, spans)
    # the heavy file was running when the realtime test wanted to start, and goes on after it
    assert any(t1 <= start for t0, t1 in (spans[f"heavy{i}"] for i in range(6)))
    assert any(t0 >= end for t0, t1 in (spans[f"heavy{i}"] for i in range(6)))
