"""``python -m benchmarks.served BUNDLE``: one bundle served over gRPC, fp32 and int8 vocoder.

For bundles too slow for the full ``python -m benchmarks`` gRPC suite (the full 44 kHz model
on CPU): unary latency and streaming first audio for one length per mode, with the server's
``--vocoder-precision`` set to each precision the bundle has. Prints JSON lines and, with
``--out``, writes them with the machine's description.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import e2e, machine
from distill_serve.bundle import VOCODER_ROLES, load_bundle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.served", description=__doc__)
    p.add_argument("bundle", type=Path)
    p.add_argument("--seconds", type=float, default=10.0, help="audio per request")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = p.parse_args(argv)
    bundle = load_bundle(args.bundle)
    roles = {f.role for f in bundle.files}
    rows: list[dict[str, Any]] = []
    for precision, role in VOCODER_ROLES.items():
        if role not in roles:
            continue
        with e2e.server(args.bundle, extra_args=("--vocoder-precision", precision)) as (t, pid):
            for row in e2e.latency(t, [args.seconds], args.repeats):
                row.update(precision=precision, server_rss_mb=round(e2e.rss_mb(pid)))
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.out:
        result = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine.describe(peak=False),
            "bundle_id": bundle.manifest.get("bundle_id"),
            "vocoder_parameters": bundle.manifest["vocoder"]["num_parameters"],
            "latency": rows,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
