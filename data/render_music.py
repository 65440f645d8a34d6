"""Render the music clips in ``data/audio/`` from MIDI written here, with FluidSynth and the
FluidR3 GM soundfont (sampled acoustic instruments, MIT licence).

Reproduce (Debian): ``apt-get install fluidsynth fluid-soundfont-gm``, ``pip install mido``,
then ``python data/render_music.py``. The clips are committed, so nothing else runs this.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import mido
import numpy as np
import soundfile as sf

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
RATE = 48000
OUT = Path(__file__).parent / "audio"
BEAT = 240  # ticks per beat at 480 ticks per quarter: eighth notes
TEMPO = mido.bpm2tempo(100)


# name: (GM program, channel, [(start in eighths, length in eighths, notes), ...])
def _hits(note: int, steps: Iterable[int]) -> list[tuple[int, int, tuple[int, ...]]]:
    """One-step hits of a drum ``note`` at ``steps``."""
    return [(i, 1, (note,)) for i in steps]


PIECES: dict[str, tuple[int, int, list[tuple[int, int, tuple[int, ...]]]]] = {
    "piano": (
        0,
        0,
        [
            (0, 4, (48, 60, 64, 67)),
            (4, 4, (53, 60, 65, 69)),
            (8, 4, (55, 59, 62, 67)),
            *((12 + i, 1, (n,)) for i, n in enumerate((72, 71, 69, 67))),
            (16, 6, (48, 64, 72)),
        ],
    ),
    "guitar": (
        24,
        0,
        [(i, 2, (n,)) for i, n in enumerate([40, 47, 52, 55, 59, 64, 59, 55, 45, 52, 57, 60])]
        + [(12, 8, (40, 47, 52, 55, 59, 64))],
    ),
    "violin": (
        40,
        0,
        [
            (0, 3, (67,)),
            (3, 1, (69,)),
            (4, 4, (71,)),
            (8, 2, (72,)),
            (10, 2, (74,)),
            (12, 8, (76,)),
        ],
    ),
    "flute": (
        73,
        0,
        [
            (0, 2, (72,)),
            (2, 2, (76,)),
            (4, 2, (79,)),
            (6, 2, (84,)),
            (8, 4, (83,)),
            (12, 2, (79,)),
            (14, 6, (81,)),
        ],
    ),
    "drums": (
        0,
        9,
        _hits(42, range(16)) + _hits(36, (0, 3, 8, 11)) + _hits(38, (4, 12)),
    ),
}


def midi_file(
    program: int, channel: int, notes: list[tuple[int, int, tuple[int, ...]]]
) -> mido.MidiFile:
    events: list[tuple[int, mido.Message]] = []
    for start, length, pitches in notes:
        for p in pitches:
            events.append(
                (start * BEAT, mido.Message("note_on", channel=channel, note=p, velocity=90))
            )
            events.append(
                ((start + length) * BEAT, mido.Message("note_off", channel=channel, note=p))
            )
    events.sort(key=lambda e: (e[0], e[1].type == "note_on"))
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=TEMPO)])
    track.append(mido.Message("program_change", channel=channel, program=program))
    now = 0
    for tick, msg in events:
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=4 * BEAT))
    return mido.MidiFile(tracks=[track], ticks_per_beat=480)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (program, channel, notes) in PIECES.items():
            mid = Path(tmp) / f"{name}.mid"
            wav = Path(tmp) / f"{name}.wav"
            midi_file(program, channel, notes).save(mid)
            subprocess.run(
                [
                    "fluidsynth",
                    "-ni",
                    "-q",
                    "-g",
                    "0.6",
                    "-r",
                    str(RATE),
                    "-F",
                    str(wav),
                    str(SOUNDFONT),
                    str(mid),
                ],
                check=True,
            )
            audio, rate = sf.read(wav, dtype="float32")
            mono = audio.mean(axis=1) if audio.ndim == 2 else audio
            mono = mono[: int(5.0 * rate)]
            mono = 0.5 * mono / max(1e-6, float(np.abs(mono).max()))
            sf.write(OUT / f"music_{name}.flac", mono, rate, subtype="PCM_16")
            print(f"music_{name}.flac: {mono.size / rate:.2f} s")


if __name__ == "__main__":
    main()
