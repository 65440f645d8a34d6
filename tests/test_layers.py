"""The layer rule (docs/architecture.md), read from the source: each layer imports only from
the layers below it, grpc only at the edges, onnxruntime only where graphs run, torch only in
export/, and no import circle anywhere. A failure names the offending import's file and line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folders and the import names they have (pyproject's package-dir).
FOLDERS = {
    "distill_serve": "distill_serve",
    "server": "distill_serve.server",
    "export": "distill_serve.export",
    "client": "distill_serve.client",
}

#: Layers by module prefix, most specific first; each may import itself and what it lists.
LAYERS: dict[str, tuple[str, ...]] = {
    "distill_serve.v1": (),  # the generated stubs
    "distill_serve.codegen": (),  # makes the stubs (a dev tool)
    "distill_serve.server.pipeline": ("core",),
    "distill_serve.server.engine": ("core", "distill_serve.server.pipeline"),
    "distill_serve.server.models": (
        "core", "distill_serve.server.pipeline", "distill_serve.server.engine",
    ),
    "distill_serve.server.api": (
        "core", "distill_serve.v1", "distill_serve.server.pipeline",
        "distill_serve.server.engine", "distill_serve.server.models",
    ),
    # the web edge runs the gRPC servicer's methods for HTTP and WebSocket calls
    "distill_serve.server.web": (
        "core", "distill_serve.v1", "distill_serve.server.pipeline",
        "distill_serve.server.engine", "distill_serve.server.models", "distill_serve.server.api",
    ),
    "distill_serve.server.ray": (
        "core", "distill_serve.v1", "distill_serve.server.pipeline",
        "distill_serve.server.engine", "distill_serve.server.models", "distill_serve.server.api",
    ),
    # export checks its resampler graphs against the pipeline's pure-numpy geometry
    "distill_serve.export": ("core", "distill_serve.server.pipeline"),
    "distill_serve.client": ("core", "distill_serve.v1"),
    # the command and the demo assemble every stage
    "distill_serve.cli": ("*",),
    "distill_serve.demo": ("*",),
    "distill_serve.__main__": ("*",),
    # the shared core: bundle, geometry, audio, codecs, isa (imports nothing above it)
    "distill_serve": ("core",),
}  # fmt: skip
CORE = ("distill_serve.bundle", "distill_serve.geometry", "distill_serve.audio",
        "distill_serve.codecs", "distill_serve.isa", "distill_serve")  # fmt: skip

#: Imports across layers that are there by design, each with its reason.
EXCEPTIONS = {
    # a server started without --bundle exports the demo bundle once (the README's demo)
    ("distill_serve.server.models.demo", "distill_serve.export.demo"),
}

#: Third-party packages only some layers may import.
RESTRICTED = {
    # gRPC at the edges: the servicer, Serve's gRPC proxy, the clients, the stubs themselves
    "grpc": ("distill_serve.server.api", "distill_serve.server.ray", "distill_serve.client",
             "distill_serve.v1", "distill_serve.server.web"),
    # HTTP and WebSocket at the web edge only
    "aiohttp": ("distill_serve.server.web",),
    "grpc_health": ("distill_serve.server.api", "distill_serve.server.ray"),
    "grpc_reflection": ("distill_serve.server.api",),
    "grpc_tools": ("distill_serve.codegen",),
    # graphs run in the engine; export runs them too, to check parity
    "onnxruntime": ("distill_serve.server.engine", "distill_serve.export"),
    "torch": ("distill_serve.export",),
    "torchaudio": ("distill_serve.export",),
}  # fmt: skip


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports (a module, or the module a name comes from)
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.module} imports {self.target}"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]], *rel.with_suffix("").parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> list[Path]:
    found = []
    for folder in FOLDERS:
        found += [p for p in sorted((ROOT / folder).rglob("*.py")) if "build" not in p.parts]
    return found


def _imports() -> list[Import]:
    modules = {_module_name(p) for p in _sources()}
    found = []
    for path in _sources():
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # ``from pkg import mod`` imports the module pkg.mod where there is one
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            else:
                continue
            found += [Import(module, t, path, node.lineno) for t in targets]
    return found


def _layer(module: str) -> str:
    return next(p for p in LAYERS if module == p or module.startswith(p + "."))


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_sources_are_found() -> None:
    names = {_module_name(p) for p in _sources()}
    for expected in (
        "distill_serve.server.api.servicer",
        "distill_serve.server.engine.scheduler",
        "distill_serve.server.pipeline.runner",
        "distill_serve.export.exporter",
        "distill_serve.client.client",
        "distill_serve.v1.distill_pb2",
    ):
        assert expected in names


def test_each_layer_imports_only_from_below() -> None:
    bad = []
    for imp in _imports():
        if not imp.target.startswith("distill_serve"):
            continue
        layer, target = _layer(imp.module), _layer(imp.target)
        allowed = LAYERS[layer]
        if target == layer or "*" in allowed or (imp.module, imp.target) in EXCEPTIONS:
            continue
        if _within(imp.target, CORE) and target == "distill_serve" and "core" in allowed:
            continue
        if target not in allowed:
            bad.append(f"{imp} (layer {layer} may import {', '.join(allowed) or 'nothing'})")
    assert not bad, "imports from a layer above:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", sorted(RESTRICTED))
def test_restricted_packages_stay_in_their_layers(package: str) -> None:
    allowed = RESTRICTED[package]
    bad = [
        f"{imp} (only {', '.join(allowed)} may import {package})"
        for imp in _imports()
        if imp.target.split(".")[0] == package and not _within(imp.module, allowed)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_circle() -> None:
    imports = [i for i in _imports() if i.target.startswith("distill_serve")]
    edges: dict[str, list[Import]] = {}
    for imp in imports:
        if imp.target != imp.module:
            edges.setdefault(imp.module, []).append(imp)
    cycles: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Import] = []

    def visit(module: str) -> None:
        state[module] = 1
        for imp in edges.get(module, []):
            if state.get(imp.target) == 1:
                start = next(i for i, p in enumerate(path) if p.module == imp.target)
                cycle = " -> ".join(str(p) for p in [*path[start:], imp])
                if cycle not in cycles:
                    cycles.append(cycle)
            elif imp.target not in state:
                path.append(imp)
                visit(imp.target)
                path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, "import circles:\n" + "\n".join(cycles)
