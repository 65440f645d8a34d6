"""How a generated file was made, in the tags its file carries.

The server sends them with every reply (``AudioFormat.tags``) and writes them into the files
it makes: FLAC and Ogg Opus as Vorbis comments (``distill_seed=...``), WAV as a ``LIST/INFO``
chunk (the comment, ``ICMT``, holds one ``key=value`` per line; the software, ``ISFT``,
names the server). The client's ``generate`` writes the same into the WAV files it makes
from raw samples.
"""

from __future__ import annotations

from collections.abc import Mapping

#: The seed of the trajectory (an integer).
SEED = "distill_seed"
#: The served model's name, as ``ListModels`` lists it.
MODEL = "distill_model"
#: The bundle's id (its sealed manifest's digest), which pins the weights.
BUNDLE = "distill_bundle"
#: The validated generation settings as compact JSON (mode, duration, sliders or latent, ...).
SETTINGS = "distill_settings"
SOFTWARE = "distill-serve"


def info_comment(tags: Mapping[str, str]) -> str:
    """The WAV comment (``ICMT``) of ``tags``: one ``key=value`` per line."""
    return "\n".join(f"{key}={value}" for key, value in tags.items())


def parse_info_comment(text: str) -> dict[str, str]:
    """``tags`` back from :func:`info_comment`'s text (lines without ``=`` are skipped)."""
    pairs = (line.partition("=") for line in text.splitlines())
    return {key: value for key, sep, value in pairs if sep}
