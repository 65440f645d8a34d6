"""``distill-serve serve``'s options: each bound once to the config field it sets
(:mod:`distill_serve.options`), so the flag, its help and its default live in one place."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill_serve.bundle import VOCODER_ROLES
from distill_serve.options import field_option, fields_from
from distill_serve.server.api.config import ServerConfig
from distill_serve.server.engine.config import CONV_ALGO_SEARCH, VOCODER_PATHS, EngineConfig
from distill_serve.server.pipeline.request import Limits

if TYPE_CHECKING:
    from distill_serve.server.api.server import EdgeFactory


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The server's, its limits' and its engine's options."""
    _models(p)
    S = ServerConfig
    field_option(p, S, "host", "--host")
    field_option(p, S, "port", "--port", type=int)
    _limits(p)
    field_option(p, S, "metrics_port", "--metrics-port", type=int, help="Prometheus HTTP port")
    _engine(p)
    field_option(p, S, "grace_s", "--grace", type=float, help="SIGTERM drain time, seconds")
    field_option(
        p, S, "malloc_arenas", "--malloc-arenas", type=int,
        help="most glibc malloc arenas (0: glibc's default); fewer hold less memory",
    )  # fmt: skip
    field_option(
        p, S, "trim_memory", "--no-trim-memory", action="store_false",
        help="keep freed heap pages instead of giving them back when generations end",
    )  # fmt: skip
    field_option(p, S, "tls_cert", "--tls-cert", type=Path, help="PEM server certificate")
    field_option(p, S, "tls_key", "--tls-key", type=Path, help="PEM server private key")
    field_option(
        p, S, "tls_client_ca", "--tls-client-ca", type=Path,
        help="PEM CA bundle: require client certificates signed by it",
    )  # fmt: skip
    field_option(
        p, S, "http_port", "--http-port", type=int,
        help="serve the web edge (WebSocket live sessions, HTTP downloads, the playground "
        "page at /) on this port too (default: off)",
    )  # fmt: skip
    field_option(
        p, S, "allowed_origins", "--allowed-origins", nargs="+", type=str, metavar="ORIGIN",
        help="web origins (https://host:port) whose pages may call the web edge besides its "
        "own; * for any (default: none)",
    )  # fmt: skip
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


def _models(p: argparse.ArgumentParser) -> None:
    S = ServerConfig
    which = p.add_mutually_exclusive_group()
    field_option(
        which, S, "bundle", "--bundle", type=Path,
        help="bundle dir (default: build and cache the demo bundle)",
    )  # fmt: skip
    field_option(
        which, S, "models_dir", "--models", type=Path,
        help="model repository: one bundle per subdirectory, served by the directory's name "
        "(its bundle_id is the version); SIGHUP or --poll-models rescans it",
    )  # fmt: skip
    field_option(
        p, S, "default_model", "--default-model",
        help="the model of requests that name none (default: the repository's first by name)",
    )  # fmt: skip
    field_option(
        p, S, "max_loaded_models", "--max-loaded-models", type=int,
        help="most models loaded at once; loading one more unloads the least recently used "
        "idle one (default 0: no limit)",
    )  # fmt: skip
    field_option(
        p, S, "poll_models_s", "--poll-models", type=float, metavar="S",
        help="rescan the repository every S seconds (default: on SIGHUP only)",
    )  # fmt: skip


def _limits(p: argparse.ArgumentParser) -> None:
    L = Limits
    field_option(
        p, L, "max_concurrent", "--max-concurrent", type=int,
        default=0,  # auto (the servicer's): not Limits' own 4
        help="concurrent generations (default: 4, or the live capacity the streaming vocoder "
        "measures if larger, following it while serving)",
    )  # fmt: skip
    field_option(
        p, L, "max_duration_s", "--max-duration", type=float, help="longest request, seconds"
    )
    field_option(
        p, L, "max_live_s", "--max-live-seconds", type=float, help="longest live session, seconds"
    )
    field_option(
        p, L, "live_idle_timeout_s", "--live-idle-timeout", type=float,
        help="drop a live session whose client reads no audio for this long, seconds",
    )  # fmt: skip
    field_option(
        p, L, "send_budget_s", "--send-budget", type=float,
        help="end a stream or live session whose client falls this far behind reading its "
        "audio in real time, seconds",
    )  # fmt: skip
    field_option(
        p, L, "max_waiting", "--queue-size", type=int,
        help="requests that may wait for a slot, per model (0: refuse at once when busy)",
    )  # fmt: skip
    field_option(
        p, L, "max_wait_s", "--queue-wait", type=float,
        help="longest a request waits for a slot before it is refused, seconds",
    )  # fmt: skip
    field_option(
        p, L, "max_concurrent_per_model", "--max-concurrent-per-model", type=int,
        help="generations one model may run at once (default 0: only --max-concurrent)",
    )  # fmt: skip


def _engine(p: argparse.ArgumentParser) -> None:
    E = EngineConfig
    field_option(
        p, E, "use_cuda", "--no-cuda", action="store_false", help="CPU execution provider only"
    )
    field_option(
        p, E, "cpu_mem_arena", "--no-cpu-arena", action="store_false",
        help="onnxruntime's CPU tensors from malloc, not its arena (they can be given back)",
    )  # fmt: skip
    field_option(p, E, "gpu_mem_limit", "--gpu-mem-limit", type=int, help="CUDA arena limit, bytes")
    field_option(
        p, E, "intra_op_threads", "--threads", type=int, help="onnxruntime intra-op threads"
    )
    field_option(
        p, E, "cudnn_conv_algo_search", "--cudnn-conv-algo-search", choices=CONV_ALGO_SEARCH,
        help="cuDNN algorithm search of onnxruntime's CUDA provider",
    )  # fmt: skip
    field_option(
        p, E, "vocoder_precision", "--vocoder-precision", choices=sorted(VOCODER_ROLES),
        help="int8: the bundle's int8 vocoder (export --int8), ~1.8x faster on CPU, 31-38 dB "
        "SNR; fp16: its fp16-convolution vocoder (export --fp16), for GPUs, ~54 dB SNR",
    )  # fmt: skip
    field_option(
        p, E, "vocoder_path", "--vocoder-path", choices=VOCODER_PATHS,
        help="stream: the bundle's streaming vocoder graph, each frame vocoded once, steps of "
        "concurrent generations batched; block: the whole-clip graph on blocks with context; "
        "auto (default): stream when the bundle has the graph and fp32 (on CUDA its steps "
        "batch on the device)",
    )  # fmt: skip
    field_option(
        p, E, "live_capacity", "--live-capacity", type=int,
        help="live sessions admitted at once on the stream path (default: measured from the "
        "streaming graph's step cost at start, then from the step costs while serving; "
        "0: no limit)",
    )  # fmt: skip
    field_option(
        p, E, "step_batch", "--step-batch", type=int,
        help="the most streaming-graph steps run together (default: 32 on the device, 1 on "
        "CPU, where batching measured no cheaper per frame and delays the first audio)",
    )  # fmt: skip
    field_option(
        p, E, "state_pool_mb", "--state-pool-mb", type=int,
        help="device memory (MiB) for the streams' vocoder states, a row per stream, so they "
        "stay on the GPU between steps (default 2048: ~360 full-BigVGAN or ~2700 demo "
        "streams; streams past it carry their states with each step; 0: no pool)",
    )  # fmt: skip
    field_option(
        p, E, "fault_injection", "--fault-injection", action="store_true",
        help="testing: allow injected CUDA OOMs (stand-in path without a GPU)",
    )  # fmt: skip


def tokens(token_file: Path | None, env: str | None = "DISTILL_SERVE_TOKENS") -> tuple[str, ...]:
    """Bearer tokens from the environment variable ``env`` (comma-separated) and a file (one
    a line; ``#`` starts a comment, on its own line or after a token)."""
    found = [t.strip() for t in os.environ.get(env, "").split(",")] if env else []
    if token_file is not None:
        lines = token_file.read_text().splitlines()
        found += [line.split("#", 1)[0].strip() for line in lines]
    return tuple(t for t in found if t)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The :class:`ServerConfig` the parsed options ask for (raises ValueError, OSError)."""
    server: dict[str, Any] = fields_from(args, ServerConfig)
    server["allowed_origins"] = tuple(server.get("allowed_origins") or ())
    return ServerConfig(
        **server,
        limits=Limits(**fields_from(args, Limits)),
        engine=EngineConfig(**fields_from(args, EngineConfig)),
        auth_tokens=tokens(args.token_file),
        admin_tokens=tokens(args.admin_token_file, env=None),
    )


def run(config: ServerConfig, edges: Sequence[EdgeFactory] = ()) -> None:
    """Serve until SIGTERM or SIGINT (the engine is imported here, not for parsing), with
    ``edges`` (the web edge) beside the gRPC server."""
    from distill_serve.server.api.server import run as serve

    asyncio.run(serve(config, edges))
