"""What the server needs to know about a bundle, read from its manifest once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distill_serve.bundle import Bundle
from distill_serve.geometry import FrameGeometry
from distill_serve.server.pipeline.resample import ResamplerGeometry


@dataclass(frozen=True)
class Sliders:
    """PCA sliders: ``z = mean + sum_i position_i * step_i * components_i``."""

    components: np.ndarray  # (n, latent_dim)
    mean: np.ndarray  # (latent_dim,)
    step: np.ndarray  # (n,)
    labels: tuple[str, ...]
    max_position: int  # positions run from -max_position to +max_position
    #: per slider (safe_min, safe_max, warning_min, warning_max) in positions (slider_ranges)
    ranges: tuple[tuple[int, int, int, int], ...] = ()

    @property
    def count(self) -> int:
        return int(self.components.shape[0])

    def latent(self, positions: dict[int, int]) -> np.ndarray:
        """Latent vector for ``{slider index: integer position}`` (others at 0)."""
        weights = np.zeros(self.count)
        for index, position in positions.items():
            weights[index] = position * self.step[index]
        return (self.mean + weights @ self.components).astype(np.float32)


@dataclass(frozen=True)
class StreamSpec:
    """The bundle's streaming vocoder graph (``manifest["vocoder"]["stream"]``; see
    ``export/streaming.py``): a stream's audio lags the whole clip by ``delay_samples``, it
    must be fed ``latency_frames`` beyond the audio it delivers, its first ``head_frames``
    frames of audio come from the whole-clip graph, and it is fed in ``step_frames`` steps.

    ``tail_frames``: frames at a fixed-length clip's end whose audio the stream, told the
    clip's end and fed ``latency_frames`` past it, does not match (0: it matches to the last
    sample, HiFi-GAN; BigVGAN's replicate padding: some). None: a graph exported before the
    ``end`` input existed, which is never told the end."""

    state_size: int
    delay_samples: int
    latency_frames: int
    head_frames: int
    step_frames: tuple[int, ...]
    tail_frames: int | None = None

    @property
    def streams_to_the_end(self) -> bool:
        """Whether a fixed-length clip's last ``delay_samples`` come from the stream (fed
        past the clip's end) rather than from the whole-clip graph."""
        return self.tail_frames == 0

    @classmethod
    def from_manifest(cls, d: dict[str, object]) -> StreamSpec:
        steps = d.get("step_frames") or (8, 16, 32)
        tail = d.get("tail_frames")  # absent before the graph's ``end`` input
        return cls(
            state_size=int(d["state_size"]),  # type: ignore[call-overload]
            delay_samples=int(d["delay_samples"]),  # type: ignore[call-overload]
            latency_frames=int(d["latency_frames"]),  # type: ignore[call-overload]
            head_frames=int(d["head_frames"]),  # type: ignore[call-overload]
            step_frames=tuple(int(x) for x in steps),  # type: ignore[attr-defined]
            tail_frames=None if tail is None else int(tail),  # type: ignore[call-overload]
        )


#: The output rate when a request names none (the Distill app's default).
DEFAULT_OUTPUT_RATE = 44_100


@dataclass(frozen=True)
class ModelSpec:
    """The served model: latent size, chunk geometry, rates, sliders and post-processing."""

    latent_dim: int
    chunk_frames: int
    chunk_duration_s: float
    decoder_frames: int
    min_chunk_frames: int
    geometry: FrameGeometry
    n_mels_voc: int
    context_frames: int
    sample_rates: tuple[int, ...]
    resamplers: dict[int, ResamplerGeometry]
    sliders: Sliders | None
    stream: StreamSpec | None
    peak_target: float
    antialias_cutoff_hz: float
    antialias_order: int
    #: the vocoder takes the decoder's own mel frames (a per-model vocoder): the bridge is
    #: interpolation on the decoder's grid, done in numpy (mel.pass_through_bridge)
    bridge_pass_through: bool = False

    @property
    def vocoder_rate(self) -> int:
        return self.geometry.vocoder_rate

    @property
    def default_sample_rate(self) -> int:
        """The rate of a request that names none: 44 100 Hz, as in the Distill app, where the
        bundle offers it; else the vocoder's own rate."""
        return (
            DEFAULT_OUTPUT_RATE if DEFAULT_OUTPUT_RATE in self.sample_rates else self.vocoder_rate
        )

    def chunk_frames_for(self, chunk_duration_s: float) -> int:
        """Decoder frames of a chunk of ``chunk_duration_s`` seconds."""
        g = self.geometry
        return round(chunk_duration_s * g.decoder_rate) // g.decoder_hop + 1

    @property
    def max_chunk_duration_s(self) -> float:
        """The checkpoint's native chunk (the decoder was trained on it)."""
        return self.chunk_duration_s

    @property
    def min_chunk_duration_s(self) -> float:
        g = self.geometry
        return (self.min_chunk_frames - 1) * g.decoder_hop / g.decoder_rate

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ModelSpec:
        m = bundle.manifest
        geo = m["geometry"]
        sliders = None
        if m.get("sliders"):
            s = m["sliders"]
            sliders = Sliders(
                components=np.asarray(s["pca_components"], dtype=np.float64),
                mean=np.asarray(s["pca_mean"], dtype=np.float64),
                step=np.asarray(s["step_size"], dtype=np.float64),
                labels=tuple(s["component_labels"]),
                max_position=int(s["n_steps"]) // 2,
                ranges=slider_ranges(s),
            )
        post = m["postprocess"]
        stream = m["vocoder"].get("stream")
        spec = StreamSpec.from_manifest(stream) if stream else None
        # Both vocoder paths finalise the same mel frames ahead of a block (the stream needs
        # its latency, the blocks their context), so a live control lands on the same frame
        # whichever path runs.
        context = int(m["vocoder"]["context_frames"])
        if spec is not None:
            context = max(context, spec.latency_frames)
        return cls(
            latent_dim=int(m["latent_dim"]),
            chunk_frames=int(m["chunk"]["chunk_frames"]),
            chunk_duration_s=float(m["chunk"]["chunk_duration_s"]),
            decoder_frames=int(m["chunk"]["decoder_frames"]),
            min_chunk_frames=int(m["chunk"]["min_chunk_frames"]),
            geometry=FrameGeometry(
                int(geo["decoder_rate"]),
                int(geo["decoder_hop"]),
                int(geo["vocoder_rate"]),
                int(geo["vocoder_hop"]),
                float(geo.get("vocoder_centre", 0.5)),  # bundles before 2026-12-06: 0.5
            ),
            n_mels_voc=int(m["vocoder_mel"]["num_mels"]),
            context_frames=context,
            sample_rates=tuple(int(r) for r in m["sample_rates"]),
            resamplers={
                int(r): ResamplerGeometry.from_manifest(d) for r, d in m["resamplers"].items()
            },
            sliders=sliders,
            stream=spec,
            peak_target=float(post["peak_target"]),
            antialias_cutoff_hz=float(post["antialias_cutoff_hz"]),
            antialias_order=int(post["antialias_order"]),
            bridge_pass_through=bool(m["vocoder_mel"].get("decoder_mel", False)),
        )


def slider_ranges(s: dict[str, object]) -> tuple[tuple[int, int, int, int], ...]:
    """Each slider's (safe_min, safe_max, warning_min, warning_max) in positions, as the
    Distill app derives them: the manifest's projection percentiles divided by the slider's
    step (inner bounds rounded inward), clamped to +-n_steps // 2; without the figures (or
    with a zero step), the whole range."""
    half = int(s["n_steps"]) // 2  # type: ignore[call-overload]
    steps = [float(x) for x in s["step_size"]]  # type: ignore[attr-defined]
    keys = ("safe_min", "safe_max", "warning_min", "warning_max")
    if not all(k in s for k in keys):
        return tuple((-half, half, -half, half) for _ in steps)
    figures = [[float(x) for x in s[k]] for k in keys]  # type: ignore[attr-defined]
    ranges = []
    for i, step in enumerate(steps):
        if step <= 0:
            ranges.append((0, 0, 0, 0))
            continue
        lo, hi, warn_lo, warn_hi = (f[i] / step for f in figures)
        ranges.append(
            (
                max(math.ceil(lo), -half),
                min(math.floor(hi), half),
                max(math.ceil(warn_lo), -half),
                min(math.floor(warn_hi), half),
            )
        )
    return tuple(ranges)
