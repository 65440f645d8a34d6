"""The ``distill-serve`` command: export, serve, generate, live, info, list-models, load,
unload and demo. Each room adds its own options (``export/cli.py``, ``server/api/cli.py``,
``server/ray/cli.py``, ``client/cli.py``, ``client/live_cli.py``); this module only puts
them together."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from distill_serve.bundle import BundleError
    from distill_serve.server.api import cli as server_cli

    try:
        config = server_cli.server_config(args)
        if args.ray:
            if config.http_port is not None:
                raise ValueError("--http-port serves beside the gRPC server, not with --ray")
            from distill_serve.server.ray import cli as ray_cli

            ray_cli.run(args, config)
        elif config.http_port is not None:
            from distill_serve.server.web.edge import WebEdge

            server_cli.run(config, edges=(WebEdge,))
        else:
            server_cli.run(config)
    except (BundleError, OSError, ValueError) as exc:
        print(f"distill-serve serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from distill_serve.demo import run_demo

    return run_demo(args.out, args.duration)


def build_parser() -> argparse.ArgumentParser:
    from distill_serve.export import cli as export_cli
    from distill_serve.server.api import cli as server_cli
    from distill_serve.server.ray import cli as ray_cli

    parser = argparse.ArgumentParser(prog="distill-serve", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (INFO, DEBUG, ...)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a checkpoint + vocoder to a model bundle")
    export_cli.add_arguments(p)
    p.set_defaults(func=export_cli.run)

    p = sub.add_parser("serve", help="serve a bundle, or a repository of them, over gRPC")
    server_cli.add_arguments(p)
    ray_cli.add_arguments(p)
    p.set_defaults(func=_serve)

    from distill_serve.client import cli as client_cli
    from distill_serve.client.cli import add_generate_args, add_info_args, run_generate, run_info

    p = sub.add_parser("generate", help="ask a server for audio and write a WAV")
    add_generate_args(p)
    p.set_defaults(func=run_generate)

    from distill_serve.client import live_cli

    p = sub.add_parser(
        "live",
        help="play or record a live session, steered by control lines on stdin",
        description=live_cli.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    live_cli.add_live_args(p)
    p.set_defaults(func=live_cli.run_live)

    p = sub.add_parser("info", help="print a server's model info")
    add_info_args(p)
    p.set_defaults(func=run_info)

    p = sub.add_parser("list-models", help="list a server's models and their states")
    client_cli.add_server_args(p)
    p.set_defaults(func=client_cli.run_list_models)

    p = sub.add_parser("load", help="load or reload a model of a server (admin token)")
    client_cli.add_control_args(p, unload=False)
    p.set_defaults(func=client_cli.run_load)

    p = sub.add_parser("unload", help="unload a model of a server (admin token)")
    client_cli.add_control_args(p, unload=True)
    p.set_defaults(func=client_cli.run_unload)

    p = sub.add_parser("demo", help="demo bundle + local server + one clip per mode")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="where to write WAVs")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
