"""The ``distill-serve`` command: export, serve, generate, live, info, list-models, load,
unload and demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from distill_serve.bundle import VOCODER_ROLES

if TYPE_CHECKING:
    from distill_serve.server.api.server import ServerConfig

DEFAULT_RATES = "16000,22050,24000,32000,44100,48000,88200,96000"


def _rates(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(r) for r in text.replace(" ", "").split(",") if r)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--rates wants integers like {DEFAULT_RATES}") from exc


def _export(args: argparse.Namespace) -> int:
    from distill_serve.export.checkpoint import CheckpointError
    from distill_serve.export.exporter import ExportConfig, ExportError, export_bundle
    from distill_serve.export.vocoder import VocoderError

    try:
        if args.demo:
            from distill_serve.export.demo import export_demo_bundle

            manifest = export_demo_bundle(
                args.out, fmt=args.format, rates=args.rates, progress=not args.quiet
            )
        elif args.stand_in:
            from distill_serve.export.demo import export_stand_in_bundle

            manifest = export_stand_in_bundle(
                args.out, fmt=args.format, rates=args.rates, progress=not args.quiet
            )  # the stand-in always carries the int8 and fp16 vocoders
        else:
            if args.checkpoint is None or args.vocoder is None:
                print(
                    "distill-serve export: give --checkpoint and --vocoder, --demo or --stand-in",
                    file=sys.stderr,
                )
                return 2
            manifest = export_bundle(
                ExportConfig(
                    checkpoint=args.checkpoint,
                    vocoder=args.vocoder,
                    out=args.out,
                    format=args.format,
                    rates=args.rates,
                    int8=args.int8,
                    fp16=args.fp16,
                    refiner=args.refiner,
                    stream=not args.no_stream,
                    progress=not args.quiet,
                )
            )
    except (CheckpointError, VocoderError, ExportError, ValueError) as exc:
        print(f"distill-serve export: {exc}", file=sys.stderr)
        return 1
    worst = {name: round(r["min_snr_db"], 1) for name, r in manifest["parity"].items()}
    print(f"wrote bundle {args.out} ({manifest['bundle_id']}) in {manifest['export_seconds']} s")
    print(f"parity (min SNR dB; vs torch, the stream graph vs the whole-clip graph): {worst}")
    return 0


def _tokens(token_file: Path | None, env: str | None = "DISTILL_SERVE_TOKENS") -> tuple[str, ...]:
    """Bearer tokens from the environment variable ``env`` (comma-separated) and a file (one
    a line)."""
    tokens = [t.strip() for t in os.environ.get(env, "").split(",")] if env else []
    if token_file is not None:
        tokens += [line.strip() for line in token_file.read_text().splitlines()]
    return tuple(t for t in tokens if t and not t.startswith("#"))


def _serve(args: argparse.Namespace) -> int:
    from distill_serve.bundle import BundleError
    from distill_serve.server.api.server import ServerConfig, run
    from distill_serve.server.engine.engine import EngineConfig
    from distill_serve.server.pipeline.request import Limits

    try:
        config = ServerConfig(
            bundle=args.bundle,
            models_dir=args.models,
            default_model=args.default_model,
            max_loaded_models=args.max_loaded_models,
            poll_models_s=args.poll_models,
            host=args.host,
            port=args.port,
            limits=Limits(
                max_duration_s=args.max_duration,
                max_concurrent=args.max_concurrent,
                max_concurrent_per_model=args.max_concurrent_per_model,
                max_live_s=args.max_live_seconds,
                live_idle_timeout_s=args.live_idle_timeout,
            ),
            engine=EngineConfig(
                use_cuda=not args.no_cuda,
                gpu_mem_limit=args.gpu_mem_limit,
                intra_op_threads=args.threads,
                fault_injection=args.fault_injection,
                vocoder_precision=args.vocoder_precision,
                vocoder_path=args.vocoder_path,
                live_capacity=args.live_capacity,
                cudnn_conv_algo_search=args.cudnn_conv_algo_search,
            ),
            metrics_port=args.metrics_port,
            grace_s=args.grace,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            auth_tokens=_tokens(args.token_file),
            admin_tokens=_tokens(args.admin_token_file, env=None),
        )
        if args.ray:
            return _serve_ray(args, config)
        asyncio.run(run(config))
    except (BundleError, OSError, ValueError) as exc:
        print(f"distill-serve serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_ray(args: argparse.Namespace, config: ServerConfig) -> int:
    """``serve --ray``: the same servicer as Ray Serve replicas behind Serve's gRPC proxy."""
    try:
        from distill_serve.server.ray import serve as ray_serve
    except ImportError as exc:
        raise ValueError(
            f"--ray needs Ray Serve: pip install 'distill-serve[ray]' ({exc})"
        ) from exc
    from distill_serve.server.api.server import ensure_demo_bundle

    if config.tls_cert is not None:
        raise ValueError("--ray: Serve's gRPC proxy has no TLS; terminate TLS in front of it")
    ray_config = ray_serve.RayConfig(
        address=args.ray_address,
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica,
        max_models_per_replica=args.max_models_per_replica,
        metrics_export_port=args.ray_metrics_port,
    )
    repository = config.models_dir is not None
    source = config.models_dir or config.bundle or ensure_demo_bundle()
    ray_serve.run(
        source, config.engine, config.limits, config.auth_tokens, ray_config, args.host,
        args.port, repository=repository, default_model=config.default_model,
    )  # fmt: skip
    return 0


def _demo(args: argparse.Namespace) -> int:
    from distill_serve.demo import run_demo

    return run_demo(args.out, args.duration)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill-serve", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (INFO, DEBUG, ...)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a checkpoint + vocoder to a model bundle")
    p.add_argument("--checkpoint", type=Path, help="Distill .distill checkpoint")
    p.add_argument(
        "--vocoder",
        help="hifigan-universal, a HiFi-GAN checkpoint (config.json beside it) or dir, "
        "or a BigVGAN Hugging Face id or local dir",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--format", choices=["onnx", "torchscript", "both"], default="onnx")
    p.add_argument(
        "--rates",
        type=_rates,
        default=_rates(DEFAULT_RATES),
        help=f"output rates to offer (default {DEFAULT_RATES})",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write an int8 vocoder (serve it with --vocoder-precision int8)",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="also write an fp16-convolution vocoder for GPUs (--vocoder-precision fp16)",
    )
    p.add_argument(
        "--refiner",
        default="auto",
        help="the bridge's learned correction: auto (the packaged one trained for this "
        "vocoder's mel space, if any; HiFi-GAN 22 kHz/80 bands has one), none (linear bridge), "
        "or a .refiner file from python -m distill_serve.export.train_refiner",
    )
    p.add_argument(
        "--no-stream",
        action="store_true",
        help="leave out the streaming vocoder graph (vocoder_stream.onnx; the server then "
        "vocodes in blocks with context)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--demo",
        action="store_true",
        help="build the demo bundle (trained demo decoder + HiFi-GAN universal) instead",
    )
    which.add_argument(
        "--stand-in",
        action="store_true",
        help="build the random-weight stand-in bundle the tests and benchmarks use instead",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_export)

    p = sub.add_parser("serve", help="serve a bundle, or a repository of them, over gRPC")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="bundle dir (default: build and cache the demo bundle)",
    )
    which.add_argument(
        "--models",
        type=Path,
        default=None,
        help="model repository: one bundle per subdirectory, served by the directory's name "
        "(its bundle_id is the version); SIGHUP or --poll-models rescans it",
    )
    p.add_argument(
        "--default-model",
        default=None,
        help="the model of requests that name none (default: the repository's first by name)",
    )
    p.add_argument(
        "--max-loaded-models",
        type=int,
        default=0,
        help="most models loaded at once; loading one more unloads the least recently used "
        "idle one (default 0: no limit)",
    )
    p.add_argument(
        "--poll-models",
        type=float,
        default=None,
        metavar="S",
        help="rescan the repository every S seconds (default: on SIGHUP only)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=0,
        help="concurrent generations (default: 4, or the live capacity the streaming vocoder "
        "measures at start if larger)",
    )
    p.add_argument("--max-duration", type=float, default=60.0, help="longest request, seconds")
    p.add_argument(
        "--max-live-seconds", type=float, default=3600.0, help="longest live session, seconds"
    )
    p.add_argument(
        "--live-idle-timeout",
        type=float,
        default=30.0,
        help="drop a live session whose client reads no audio for this long, seconds",
    )
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus HTTP port")
    p.add_argument("--no-cuda", action="store_true", help="CPU execution provider only")
    p.add_argument("--gpu-mem-limit", type=int, default=None, help="CUDA arena limit, bytes")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    p.add_argument(
        "--cudnn-conv-algo-search",
        choices=["EXHAUSTIVE", "HEURISTIC", "DEFAULT"],
        default="HEURISTIC",
        help="cuDNN algorithm search of onnxruntime's CUDA provider",
    )
    p.add_argument(
        "--vocoder-precision",
        choices=sorted(VOCODER_ROLES),
        default="fp32",
        help="int8: the bundle's int8 vocoder (export --int8), ~1.8x faster on CPU, 31-38 dB "
        "SNR; fp16: its fp16-convolution vocoder (export --fp16), for GPUs, ~54 dB SNR",
    )
    p.add_argument(
        "--vocoder-path",
        choices=["auto", "stream", "block"],
        default="auto",
        help="stream: the bundle's streaming vocoder graph, each frame vocoded once, steps of "
        "concurrent generations batched; block: the whole-clip graph on blocks with context; "
        "auto (default): stream when the bundle has the graph, fp32 and no CUDA",
    )
    p.add_argument(
        "--live-capacity",
        type=int,
        default=None,
        help="live sessions admitted at once on the stream path (default: measured from the "
        "streaming graph's step cost at start; 0: no limit)",
    )
    p.add_argument("--grace", type=float, default=10.0, help="SIGTERM drain time, seconds")
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM server certificate")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM server private key")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="PEM CA bundle: require client certificates signed by it",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="accepted bearer tokens, one a line (also DISTILL_SERVE_TOKENS=a,b)",
    )
    p.add_argument(
        "--admin-token-file",
        type=Path,
        default=None,
        help="admin bearer tokens, one a line: these may also LoadModel / UnloadModel "
        "(without any, model control over gRPC is refused)",
    )
    p.add_argument(
        "--max-concurrent-per-model",
        type=int,
        default=0,
        help="generations one model may run at once (default 0: only --max-concurrent)",
    )
    ray = p.add_argument_group("Ray Serve (--ray; needs distill-serve[ray])")
    ray.add_argument("--ray", action="store_true", help="serve as Ray Serve replicas")
    ray.add_argument("--replicas", type=int, default=1, help="fixed number of replicas")
    ray.add_argument("--min-replicas", type=int, default=None, help="autoscaling lower bound")
    ray.add_argument("--max-replicas", type=int, default=None, help="autoscaling upper bound")
    ray.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=2.0,
        help="autoscaling target of requests in flight per replica",
    )
    ray.add_argument(
        "--ray-address", default=None, help="cluster to join ('auto'); default: a local head"
    )
    ray.add_argument("--cpus-per-replica", type=float, default=1.0)
    ray.add_argument(
        "--gpus-per-replica", type=float, default=0.0, help="fractional shares one GPU (0.25)"
    )
    ray.add_argument(
        "--max-models-per-replica",
        type=int,
        default=3,
        help="with --models: models one replica keeps loaded (Serve's multiplexing; 0: all)",
    )
    ray.add_argument(
        "--ray-metrics-port",
        type=int,
        default=None,
        help="Prometheus port of the local Ray head's metrics, ours among them (ray_distill_*)",
    )
    p.add_argument(
        "--fault-injection",
        action="store_true",
        help="testing: allow injected CUDA OOMs (stand-in path without a GPU)",
    )
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
