"""``python -m benchmarks.models``: what a model costs a server that serves many.

A repository of three bundles (the demo bundle, the stand-in, and a copy of the demo bundle
under another name: a third model with the same graphs) is loaded one model at a time
through :class:`~distill_serve.server.models.repository.ModelRepository`, as ``serve --models``
does, with the engine options ``serve`` uses (live capacity measured at load). Prints per
model: load seconds, the resident memory the process grew by, a reload's seconds (new
engine built while the old one serves), and an idle unload's seconds. Writes JSON naming the
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.__main__ import stand_in_bundle, table
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.models.demo import ensure_demo_bundle
from distill_serve.server.models.repository import ModelRepository


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(root: Path) -> list[dict[str, Any]]:
    """Loads every model (one after another: the resident memory each adds; the first also
    pays onnxruntime's one-time set-up), then reloads each (a new engine built while the old
    one serves), then unloads each idle model (and the memory that gives back)."""
    repo = ModelRepository(
        lambda r: Engine.from_dir(r, EngineConfig(use_cuda=False)), models_dir=root
    )
    rows: list[dict[str, Any]] = []
    for name in repo.names():
        before, start = rss_mib(), time.perf_counter()
        entry = await repo.load(name)
        rows.append(
            {
                "model": name,
                "state": entry.state.value,
                "load_s": round(time.perf_counter() - start, 2),
                "rss_added_mib": round(rss_mib() - before, 1),
            }
        )
    for row in rows:
        start = time.perf_counter()
        await repo.load(row["model"])
        row["reload_s"] = round(time.perf_counter() - start, 2)
    for row in rows:
        before, start = rss_mib(), time.perf_counter()
        await repo.unload(row["model"], grace_s=0.0)
        row["idle_unload_ms"] = round((time.perf_counter() - start) * 1000, 1)
        gc.collect()
        row["rss_freed_mib"] = round(before - rss_mib(), 1)
    repo.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    demo, stand_in = ensure_demo_bundle(), stand_in_bundle()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        root.mkdir()
        (root / "demo").symlink_to(demo, target_is_directory=True)
        (root / "stand-in").symlink_to(stand_in, target_is_directory=True)
        shutil.copytree(demo, root / "zz-demo-copy")
        rows = asyncio.run(measure(root))
    info = machine.describe(peak=False)
    print(f"machine: {info['cpu']} ({info['cores']} cores)")
    print(table(rows, "models loaded one after another into one repository"))
    out = args.out or Path("benchmarks/results") / f"cpu-{info['cores']}core-models.json"
    out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
