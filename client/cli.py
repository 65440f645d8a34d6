"""``distill-serve generate``, ``info``, ``list-models``, ``load`` and ``unload``: call a
running server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from distill_serve.audio import write_wav
from distill_serve.client.client import AudioResult, Client, DistillError, ModelStatus

WAV_SUBTYPES = {"pcm16": "PCM_16", "pcm24": "PCM_24", "float32": "FLOAT"}
#: Compressed encodings: the server's file is written as it came (unary), or the decoded
#: audio as a float WAV (streamed Opus)
CODEC_FILES = {"flac": (".flac",), "opus": (".opus", ".ogg")}


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    """What to generate: the arguments ``generate`` and ``live`` share."""
    p.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of the server")
    p.add_argument("--model", default="", help="the server's model (default: its default)")
    p.add_argument("--mode", required=True, choices=["crossfade", "latent_interp", "slider"])
    p.add_argument("--seed", type=int, default=None, help="trajectory seed (default: server's)")
    p.add_argument("--rate", type=int, default=0, help="output sample rate (default: model's)")
    p.add_argument(
        "--encoding",
        choices=sorted([*WAV_SUBTYPES, *CODEC_FILES]),
        default="pcm16",
        help="pcm16/pcm24/float32 (raw samples), flac (lossless file, unary only) or opus",
    )
    p.add_argument("--bitrate", type=int, default=None, help="opus: bit/s (default 128000)")
    p.add_argument("--bits", type=int, default=None, choices=[16, 24], help="flac: bit depth")
    stereo = p.add_mutually_exclusive_group()  # each sets the spatial mode (default mono)
    p.set_defaults(spatial="mono")
    stereo.add_argument(
        "--stereo",
        dest="spatial",
        action="store_const",
        const="stereo",
        help="mid-side stereo (decorrelated)",
    )
    stereo.add_argument(
        "--haas",
        dest="spatial",
        action="store_const",
        const="haas",
        help="stereo as the Distill app makes it (15 ms Haas delay, width, depth)",
    )
    stereo.add_argument(
        "--dual-seed",
        dest="spatial",
        action="store_const",
        const="dual_seed",
        help="stereo from seed and seed+1",
    )
    p.add_argument(
        "--width",
        type=float,
        default=None,
        help="stereo width: --stereo [0, 2] (default 1), --haas [0, 1.5] (default 0.7)",
    )
    p.add_argument("--depth", type=float, default=None, help="--haas depth in [0, 1] (0.5)")
    p.add_argument(
        "--slider",
        action="append",
        default=[],
        metavar="INDEX=POS",
        help="slider position (slider mode), repeatable",
    )
    p.add_argument("--latent", type=Path, default=None, help="latent vector .npy (slider mode)")
    p.add_argument("--steps-between", type=int, default=None, help="latent_interp density")
    p.add_argument(
        "--evolution",
        type=float,
        default=None,
        help="how far slider mode strays from the slider setting, in [0, 1] (default 0.5)",
    )
    p.add_argument("--chunk-duration", type=float, default=None, help="decoder chunk seconds")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.add_argument("--token", default=None, help="bearer token")


def _spec_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`build_spec` keywords from :func:`_add_spec_args`' arguments."""
    return dict(
        seed=args.seed,
        sample_rate=args.rate,
        encoding=args.encoding,
        spatial=args.spatial,
        stereo_width=args.width,
        stereo_depth=args.depth,
        steps_between=args.steps_between,
        evolution_amount=args.evolution,
        chunk_duration_s=args.chunk_duration,
        sliders=_sliders(args.slider),
        latent=np.load(args.latent) if args.latent is not None else None,
        model=args.model,
        bitrate_bps=args.bitrate,
        bits_per_sample=args.bits,
    )


def add_generate_args(p: argparse.ArgumentParser) -> None:
    _add_spec_args(p)
    p.add_argument("--duration", type=float, required=True, help="seconds of audio")
    p.add_argument("--stream", action="store_true", help="use the streaming RPC")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="file to write: .wav; .flac with --encoding flac; .opus/.ogg with --encoding opus "
        "(unary; a streamed opus reply is written decoded, as .wav)",
    )


def _sliders(values: list[str]) -> dict[int, int] | None:
    if not values:
        return None
    out = {}
    for item in values:
        index, sep, pos = item.partition("=")
        if not sep:
            raise ValueError(f"--slider wants INDEX=POS, got {item!r}")
        out[int(index)] = int(pos)
    return out


def _fail(message: str) -> int:
    print(f"distill-serve: {message}", file=sys.stderr)
    return 1


def _describe(exc: DistillError, server: str) -> str:
    # UNAVAILABLE is also the server's answer for a model that cannot serve now ("model 'x'
    # is being unloaded"); only a transport failure means the server is not there.
    if exc.code == grpc.StatusCode.UNAVAILABLE and not exc.details.startswith("model "):
        return f"server {server} is unavailable ({exc.details}); is `distill-serve serve` running?"
    return f"server refused the request: {exc.code.name}: {exc.details}"


def run_generate(args: argparse.Namespace) -> int:
    try:
        options = _spec_options(args)
        _check_output(args.output, args.encoding, args.stream)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    try:
        with Client(args.server, token=args.token, timeout=args.timeout) as client:
            if args.stream:
                result: AudioResult = client.generate_streamed(args.mode, args.duration, **options)
            else:
                result = client.generate(args.mode, args.duration, **options)
    except DistillError as exc:
        return _fail(_describe(exc, args.server))
    if result.file and args.encoding in CODEC_FILES:
        args.output.write_bytes(result.file)  # the server's FLAC or Ogg Opus file as it came
    else:
        subtype = WAV_SUBTYPES.get(args.encoding, "FLOAT")  # decoded Opus: float samples
        write_wav(args.output, result.audio, result.sample_rate, subtype, result.tags)
    provider = result.stats.execution_provider if result.stats else "?"
    print(
        f"wrote {args.output}: {result.duration_s:.3f} s, {result.sample_rate} Hz, "
        f"{result.channels} ch; seed {result.seed}; "
        f"first audio {result.client_first_audio_s:.3f} s, "
        f"total {result.client_total_s:.3f} s ({'stream' if args.stream else 'unary'}, {provider})"
    )
    return 0


def _check_output(output: Path, encoding: str, stream: bool) -> None:
    """The output file's suffix must say what is written into it."""
    suffix = output.suffix.lower()
    wanted = (".wav",) if encoding in WAV_SUBTYPES or stream else CODEC_FILES[encoding]
    if suffix not in wanted:
        what = "a streamed reply is written decoded" if encoding in CODEC_FILES else encoding
        raise ValueError(f"--output {output}: {what}: name it *{' or *'.join(wanted)}")


def add_server_args(p: argparse.ArgumentParser, timeout: float = 10.0) -> None:
    p.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of the server")
    p.add_argument("--token", default=None, help="bearer token")
    p.add_argument("--timeout", type=float, default=timeout)


def add_info_args(p: argparse.ArgumentParser) -> None:
    add_server_args(p)
    p.add_argument("--model", default="", help="the model to describe (default: the default)")


def run_info(args: argparse.Namespace) -> int:
    try:
        with Client(args.server, token=args.token, timeout=args.timeout) as client:
            info = client.info(model=args.model)
    except DistillError as exc:
        return _fail(_describe(exc, args.server))
    if info.model:
        print(f"model: {info.model} (version {info.model_version})")
    card = info.card
    if card.get("name"):
        made = f" from {card['file_format']}" if card.get("file_format") else ""
        print(f"distill model: {card['name']}{made}, {card['training_epochs']} training epochs")
        if card.get("description"):
            print(f"  {card['description']}")
        if card.get("dataset_name"):
            print(
                f"  dataset {card['dataset_name']}: {card['dataset_file_count']} files, "
                f"{card['dataset_duration_s']:g} s"
            )
    if info.vocoder:
        why = f" ({info.vocoder_choice})" if info.vocoder_choice else ""
        print(f"vocoder: {info.vocoder}{why}")
    print(f"latent_dim: {info.latent_dim}")
    print(f"execution provider: {info.execution_provider}, vocoder {info.vocoder_precision}")
    capacity = f", live capacity {info.live_capacity} sessions" if info.live_capacity else ""
    print(f"vocoder path: {info.vocoder_path or 'block'}{capacity}")
    if info.provider_note:
        print(f"CUDA not serving: {info.provider_note}")
    print(
        f"sample rates: {', '.join(map(str, info.sample_rates))} "
        f"(default {info.default_sample_rate})"
    )
    print(f"encodings: {', '.join(info.encodings)}")
    print(
        f"limits: duration <= {info.max_duration_s:g} s, "
        f"{info.max_concurrent_generations} concurrent generations"
    )
    if info.sliders:
        print("sliders:")
        for s in info.sliders:
            print(f"  {s.index:2d} {s.label:<14} [{s.min_position}, {s.max_position}]")
    else:
        print("sliders: none (slider mode takes a latent vector)")
    return 0


def _status_line(m: ModelStatus) -> str:
    line = f"{m.name:<20} {m.state:<9} {m.version or '-':<16} {m.vocoder or '-':<8}"
    if m.sample_rates:
        line += f" {m.default_sample_rate} Hz, {len(m.sliders)} sliders"
    line += f", {m.in_flight} in flight" if m.in_flight else ""
    line += " (default)" if m.is_default else ""
    return line + (f": {m.reason}" if m.reason else "")


def run_list_models(args: argparse.Namespace) -> int:
    try:
        with Client(args.server, token=args.token, timeout=args.timeout) as client:
            models = client.list_models()
    except DistillError as exc:
        return _fail(_describe(exc, args.server))
    for m in models:
        print(_status_line(m))
    return 0


def add_control_args(p: argparse.ArgumentParser, unload: bool) -> None:
    add_server_args(p, timeout=600.0)
    p.add_argument("name", help="the model (a directory of the server's --models repository)")
    if unload:
        p.add_argument(
            "--grace", type=float, default=None, help="seconds in-flight generations may run on"
        )


def run_load(args: argparse.Namespace) -> int:
    try:
        with Client(args.server, token=args.token, timeout=args.timeout) as client:
            status = client.load_model(args.name)
    except DistillError as exc:
        return _fail(_describe(exc, args.server))
    print(_status_line(status))
    return 0 if status.state == "ready" else 1


def run_unload(args: argparse.Namespace) -> int:
    try:
        with Client(args.server, token=args.token, timeout=args.timeout) as client:
            status = client.unload_model(args.name, args.grace)
    except DistillError as exc:
        return _fail(_describe(exc, args.server))
    print(_status_line(status))
    return 0
