"""The API contract: buf lint passes and the committed stubs are fresh."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from distill_serve import codegen

ROOT = Path(__file__).resolve().parents[1]
BUF = ["npx", "--yes", "@bufbuild/buf@1.75.0"]


def test_buf_lint_passes() -> None:
    if shutil.which("npx") is None:
        pytest.fail("npx (Node.js) is needed to run buf from npm; install nodejs and npm")
    files = subprocess.run(
        [*BUF, "ls-files"], cwd=ROOT / "proto", capture_output=True, text=True, timeout=300
    )
    assert files.returncode == 0, files.stderr
    assert "distill_serve/v1/distill.proto" in files.stdout
    lint = subprocess.run(
        [*BUF, "lint"], cwd=ROOT / "proto", capture_output=True, text=True, timeout=300
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_stubs_are_fresh(tmp_path: Path) -> None:
    written = codegen.generate(ROOT, tmp_path)
    assert {p.name for p in written} == set(codegen.GENERATED)
    for path in written:
        committed = ROOT / codegen.OUT_DIR / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `python -m distill_serve.codegen`"
        )
