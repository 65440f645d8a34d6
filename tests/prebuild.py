"""``python -m tests.prebuild BASE``: the shared builds of a test run (tests/shared_builds.py)
in BASE, started by tests/conftest.py when the run starts. The stand-in export (mostly one
core) and the native builds (at a lower CPU priority) run side by side with the first test
modules; a test that needs one waits on its lock. A failure here is only logged: the
fixture that needs the build then builds it itself and fails with the reason."""

from __future__ import annotations

import sys
import threading
import traceback
from pathlib import Path

from tests import shared_builds as sb

#: CPU priority (nice value) of the native builds in the background.
NICE = 10


def _guarded(name: str, fn: object) -> threading.Thread:
    def run() -> None:
        try:
            fn()  # type: ignore[operator]
            print(f"prebuild: {name} ready", flush=True)
        except Exception:
            print(f"prebuild: {name} failed:\n{traceback.format_exc()}", flush=True)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def main(base: Path) -> None:
    jobs = [_guarded("stand-in", lambda: sb.ensure(base / "stand-in", "manifest.json",
                                                   sb.export_stand_in))]  # fmt: skip
    if sb.native_toolchain_missing() is None:

        def native() -> None:
            # At a lower CPU priority: the largest modules, which xdist schedules first, wait
            # for the stand-in export, and the native builds are needed only later.
            client = sb.ensure(
                base / "client-build", "built", lambda out: sb.build_client(out, nice=NICE)
            )
            if sb.DPF.is_file():
                sb.ensure(
                    base / "plugin", "built", lambda out: sb.build_plugin(out, client, nice=NICE)
                )

        jobs.append(_guarded("native clients", native))
    for job in jobs:
        job.join()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
