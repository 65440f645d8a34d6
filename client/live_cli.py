"""``distill-serve live``: play or record a live session, steered by lines on stdin.

Control lines (one per line; ``#`` starts a comment)::

    slider 0=4 2=-3 [over SECONDS]   move sliders (the others stay)
    latent V1,V2,...  [over SECONDS]  steer toward a latent vector
    evolution AMOUNT                  drift per chunk, in [0, 1]
    width WIDTH [over SECONDS]        stereo width (--stereo or --haas sessions)
    wait SECONDS                      pause before the next line (for scripts)
    stop                              fade out and end

End of input (Ctrl-D, or the end of a piped file) stops the session too.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import soundfile as sf

from distill_serve.client.cli import (
    WAV_SUBTYPES,
    _add_spec_args,
    _describe,
    _fail,
    _sliders,
    _spec_options,
)
from distill_serve.client.client import Client, DistillError
from distill_serve.client.live import LiveSession


def add_live_args(p: argparse.ArgumentParser) -> None:
    _add_spec_args(p)
    p.add_argument("--lookahead", type=float, default=0.3, help="seconds the server may run ahead")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this much audio")
    p.add_argument("-o", "--output", type=Path, default=None, help="WAV file to write")
    p.add_argument(
        "--play", action="store_true", help="play on the default audio device (sounddevice)"
    )


def _over(words: list[str]) -> tuple[list[str], float | None]:
    """Split a trailing ``over SECONDS`` off a control line's words."""
    if len(words) >= 2 and words[-2] == "over":
        return words[:-2], float(words[-1])
    return words, None


def apply_line(session: LiveSession, line: str, sleep: Callable[[float], object]) -> bool:
    """Carry out one control line; returns False once the session was told to stop."""
    words = line.split("#", 1)[0].split()
    if not words:
        return True
    verb, rest = words[0], words[1:]
    rest, over = _over(rest)
    if verb == "slider" and rest:
        session.set_sliders(_sliders(rest) or {}, transition_s=over)
    elif verb == "latent" and len(rest) == 1:
        session.set_latent([float(v) for v in rest[0].split(",")], transition_s=over)
    elif verb == "evolution" and len(rest) == 1:
        session.set_evolution(float(rest[0]))
    elif verb == "width" and len(rest) == 1:
        session.set_stereo_width(float(rest[0]), transition_s=over)
    elif verb == "wait" and len(rest) == 1:
        sleep(float(rest[0]))
    elif verb == "stop" and not rest:
        session.stop()
        return False
    else:
        raise ValueError(f"not a control line: {line.strip()!r} (see distill-serve live --help)")
    return True


def _steer(session: LiveSession, lines: Iterable[str], stopped: threading.Event) -> None:
    """Feed control lines to the session until stop or end of input (which stops it)."""
    for line in lines:
        if stopped.is_set():
            return
        try:
            if not apply_line(session, line, stopped.wait):
                return
        except ValueError as exc:
            print(f"distill-serve live: {exc}", file=sys.stderr)
    if not stopped.is_set():
        session.stop()


class _Sink:
    """Where blocks go: a WAV file and/or the audio device, opened at the first block."""

    def __init__(self, output: Path | None, play: bool, encoding: str) -> None:
        self._output, self._play, self._encoding = output, play, encoding
        self._wav: Any = None
        self._device: Any = None
        if play:
            try:
                import sounddevice  # noqa: F401
            except ImportError as exc:
                raise ValueError("--play needs the sounddevice package (pip install it)") from exc

    def write(self, audio: Any, rate: int) -> None:
        if self._output is not None and self._wav is None:
            self._wav = sf.SoundFile(
                self._output,
                "w",
                samplerate=rate,
                channels=audio.shape[0],
                subtype=WAV_SUBTYPES.get(self._encoding, "FLOAT"),  # decoded Opus: float
            )
        if self._play and self._device is None:
            import sounddevice

            self._device = sounddevice.OutputStream(samplerate=rate, channels=audio.shape[0])
            self._device.start()
        if self._wav is not None:
            self._wav.write(audio.T)
        if self._device is not None:
            self._device.write(audio.T.copy())  # blocks while the device's buffer is full

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
        if self._device is not None:
            self._device.stop()
            self._device.close()


def run_live(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    if args.output is None and not args.play:
        return _fail("live: give -o/--output FILE.wav, --play, or both")
    try:
        options = _spec_options(args)
        sink = _Sink(args.output, args.play, args.encoding)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    stopped = threading.Event()
    seconds = 0.0
    started = time.perf_counter()
    try:
        with Client(args.server, token=args.token, timeout=args.timeout) as client:
            session = client.live(args.mode, lookahead=args.lookahead, **options)
            steer = threading.Thread(
                target=_steer, args=(session, stdin or sys.stdin, stopped), daemon=True
            )
            steer.start()
            for block in session:
                rate = block.header.sample_rate
                sink.write(block.audio, rate)
                seconds += block.audio.shape[1] / rate
                over = args.max_seconds is not None and seconds >= args.max_seconds
                if over and not stopped.is_set():
                    stopped.set()
                    session.stop()
            stopped.set()
    except DistillError as exc:
        return _fail(_describe(exc, args.server))
    finally:
        stopped.set()
        sink.close()
    where = f"wrote {args.output}" if args.output else "played"
    print(
        f"{where}: {seconds:.3f} s of live audio in {time.perf_counter() - started:.1f} s; "
        f"ended by {session.end_reason or 'the server'}"
    )
    return 0
