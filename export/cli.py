"""``distill-serve export``'s options and run (torch is imported when it runs, not when the
command line is parsed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill_serve.export.config import DEFAULT_RATES

RATES = ",".join(str(r) for r in DEFAULT_RATES)


def _rates(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(r) for r in text.replace(" ", "").split(",") if r)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--rates wants integers like {RATES}") from exc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="the Distill model file (.distillgan from Distill v1.1, .distill, .sda)",
    )
    p.add_argument(
        "--vocoder",
        default="auto",
        help="auto (default, as the app chooses: the model file's own per-model vocoder), "
        "bundled (the same, by name), hifigan-universal, a HiFi-GAN checkpoint (config.json "
        "beside it) or dir, or a BigVGAN Hugging Face id or local dir",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--format", choices=["onnx", "torchscript", "both"], default="onnx")
    p.add_argument(
        "--rates",
        type=_rates,
        default=DEFAULT_RATES,
        help=f"output rates to offer (default {RATES})",
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


def run(args: argparse.Namespace) -> int:
    """Export as the parsed options ask; 0, or 1 with a one-line error on stderr."""
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
            if args.checkpoint is None:
                print(
                    "distill-serve export: give --checkpoint (and --vocoder), --demo or --stand-in",
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
