"""Generate the typed Python stubs in ``distill_serve/v1`` from ``proto/``.

Run from the repository root (needs the ``dev`` extra)::

    python -m distill_serve.codegen

The proto lives at ``proto/distill_serve/v1/distill.proto`` (its package, for buf); protoc's
``VIRTUAL=DISK`` include form maps it to ``distill_serve/v1`` so that the generated modules
import as ``distill_serve.v1``: one place that the server (``server/api``) and the clients
(``client/``) both import, neither reaching into the other.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path("proto/distill_serve/v1")
PROTO_FILE = "distill.proto"
VIRTUAL = "distill_serve/v1"
OUT_DIR = Path("distill_serve/v1")
GENERATED = ("distill_pb2.py", "distill_pb2.pyi", "distill_pb2_grpc.py", "distill_pb2_grpc.pyi")


def generate(repo_root: Path, out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) with the mypy-protobuf plugins; write into ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    plugins = []
    for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc"):
        # mypy-protobuf installs its plugins beside this interpreter (the venv's bin/).
        found = Path(sys.executable).parent / name
        path = str(found) if found.is_file() else shutil.which(name)
        if path is None:
            raise RuntimeError(f"{name} not found: pip install 'distill-serve[dev]'")
        plugins.append(f"--plugin={name}={path}")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            *plugins,
            f"-I{VIRTUAL}={repo_root / PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            f"{VIRTUAL}/{PROTO_FILE}",
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            target = out_dir / name
            shutil.copyfile(Path(tmp) / VIRTUAL / name, target)
            written.append(target)
        return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument(
        "--out", type=Path, default=None, help="output dir (default distill_serve/v1)"
    )
    args = parser.parse_args(argv)
    out = args.out or args.root / OUT_DIR
    for path in generate(args.root, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
