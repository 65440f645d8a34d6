"""ctypes binding of libdistill (client/c/include/distill.h), for Python hosts and tests.

    lib = load("build/client/c/libdistill.so")
    config = lib.config(server="127.0.0.1:50051", mode=MODE_SLIDER, sliders=[4], sample_rate=48000)
    with Session(lib, config) as s:
        left, right = s.render(512)       # numpy arrays
        s.set_slider(1, -6)

Kept next to the header (not in the wheel): the struct layouts here must follow distill.h.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

MODE_CROSSFADE, MODE_LATENT_INTERP, MODE_SLIDER = 1, 2, 3
STATES = ("connecting", "buffering", "playing", "stopped", "failed")
OK, ERROR_ARGUMENT, ERROR_QUEUE_FULL, ERROR_ENDED = 0, -1, -2, -3


class Config(ctypes.Structure):
    _fields_ = [
        ("server", ctypes.c_char_p),
        ("token", ctypes.c_char_p),
        ("tls_root_certs", ctypes.c_char_p),
        ("mode", ctypes.c_int),
        ("has_seed", ctypes.c_int),
        ("seed", ctypes.c_uint64),
        ("sliders", ctypes.POINTER(ctypes.c_int32)),
        ("num_sliders", ctypes.c_uint32),
        ("latent", ctypes.POINTER(ctypes.c_float)),
        ("latent_dim", ctypes.c_uint32),
        ("evolution_amount", ctypes.c_float),
        ("stereo_width", ctypes.c_float),
        ("lookahead_s", ctypes.c_double),
        ("jitter_s", ctypes.c_double),
        ("sample_rate", ctypes.c_uint32),
        ("channels", ctypes.c_uint32),
        ("max_frames", ctypes.c_uint32),
        ("model", ctypes.c_char_p),
        ("timeline", ctypes.c_int),
        ("start_position", ctypes.c_uint64),
        ("unpaced", ctypes.c_int),
    ]


class Status(ctypes.Structure):
    _fields_ = [
        ("state", ctypes.c_int),
        ("underruns", ctypes.c_uint64),
        ("connects", ctypes.c_uint64),
        ("frames_rendered", ctypes.c_uint64),
        ("frames_played", ctypes.c_uint64),
        ("frames_before_audio", ctypes.c_uint64),
        ("frames_buffered", ctypes.c_uint32),
        ("control_sent", ctypes.c_uint64),
        ("control_heard", ctypes.c_uint64),
        ("seed", ctypes.c_uint64),
        ("last_error", ctypes.c_char * 256),
        ("controls_refused", ctypes.c_uint64),
        ("frames_late", ctypes.c_uint64),
    ]

    @property
    def state_name(self) -> str:
        return STATES[self.state]


@dataclass(frozen=True)
class Slider:
    label: str
    min_position: int
    max_position: int


@dataclass(frozen=True)
class ModelInfo:
    latent_dim: int
    sliders: list[Slider]
    sample_rates: list[int]


class Library:
    """libdistill loaded with its function signatures declared."""

    def __init__(self, path: Path | str) -> None:
        lib = ctypes.CDLL(str(path))
        p, u32, i32, f32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int32, ctypes.c_float
        i64, u64 = ctypes.c_int64, ctypes.c_uint64
        signatures = {
            "distill_config_init": (None, [ctypes.POINTER(Config)]),
            "distill_open": (p, [ctypes.POINTER(Config), ctypes.c_char_p, ctypes.c_size_t]),
            "distill_render": (u32, [p, ctypes.POINTER(ctypes.POINTER(f32)), u32]),
            "distill_render_interleaved": (u32, [p, ctypes.POINTER(f32), u32]),
            "distill_wait": (u32, [p, u32, ctypes.c_double]),
            "distill_render_at": (u32, [p, ctypes.POINTER(ctypes.POINTER(f32)), u32, i64]),
            "distill_wait_at": (ctypes.c_int, [p, u32, i64, ctypes.c_double]),
            "distill_seek": (ctypes.c_int, [p, u64, ctypes.c_int]),
            "distill_set_slider_at": (ctypes.c_int, [p, u32, i32, u64]),
            "distill_set_evolution_at": (ctypes.c_int, [p, f32, u64]),
            "distill_set_stereo_width_at": (ctypes.c_int, [p, f32, u64]),
            "distill_set_slider": (ctypes.c_int, [p, u32, i32]),
            "distill_set_latent": (ctypes.c_int, [p, ctypes.POINTER(f32), u32]),
            "distill_set_evolution": (ctypes.c_int, [p, f32]),
            "distill_set_stereo_width": (ctypes.c_int, [p, f32]),
            "distill_stop": (ctypes.c_int, [p]),
            "distill_play": (ctypes.c_int, [p]),
            "distill_set_seed": (ctypes.c_int, [p, ctypes.c_uint64]),
            "distill_latency_frames": (u32, [p]),
            "distill_get_status": (None, [p, ctypes.POINTER(Status)]),
            "distill_close": (None, [p]),
            "distill_model_info_get": (
                p,
                [ctypes.POINTER(Config), ctypes.c_double, ctypes.c_char_p, ctypes.c_size_t],
            ),
            "distill_model_latent_dim": (u32, [p]),
            "distill_model_num_sliders": (u32, [p]),
            "distill_model_slider_label": (ctypes.c_char_p, [p, u32]),
            "distill_model_slider_min": (i32, [p, u32]),
            "distill_model_slider_max": (i32, [p, u32]),
            "distill_model_num_sample_rates": (u32, [p]),
            "distill_model_sample_rate": (u32, [p, u32]),
            "distill_model_info_free": (None, [p]),
            "distill_version": (ctypes.c_char_p, []),
        }
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.lib = lib

    def config(
        self,
        *,
        sliders: Sequence[int] = (),
        latent: Sequence[float] = (),
        seed: int | None = None,
        **fields: object,
    ) -> Config:
        """A :class:`Config` from distill_config_init with ``fields`` set (str as bytes)."""
        config = Config()
        self.lib.distill_config_init(ctypes.byref(config))
        for name, value in fields.items():
            setattr(config, name, value.encode() if isinstance(value, str) else value)
        if seed is not None:
            config.has_seed, config.seed = 1, seed
        # Kept on the Config so that the arrays live as long as it does.
        config._sliders = (ctypes.c_int32 * max(1, len(sliders)))(*sliders)
        config._latent = (ctypes.c_float * max(1, len(latent)))(*latent)
        config.sliders = ctypes.cast(config._sliders, ctypes.POINTER(ctypes.c_int32))
        config.num_sliders = len(sliders)
        config.latent = ctypes.cast(config._latent, ctypes.POINTER(ctypes.c_float))
        config.latent_dim = len(latent)
        return config

    def model_info(self, config: Config, timeout_s: float = 10) -> ModelInfo:
        error = ctypes.create_string_buffer(512)
        info = self.lib.distill_model_info_get(ctypes.byref(config), timeout_s, error, 512)
        if not info:
            raise RuntimeError(error.value.decode())
        try:
            lib = self.lib
            sliders = [
                Slider(
                    lib.distill_model_slider_label(info, i).decode(),
                    lib.distill_model_slider_min(info, i),
                    lib.distill_model_slider_max(info, i),
                )
                for i in range(lib.distill_model_num_sliders(info))
            ]
            rates = [
                lib.distill_model_sample_rate(info, i)
                for i in range(lib.distill_model_num_sample_rates(info))
            ]
            return ModelInfo(lib.distill_model_latent_dim(info), sliders, rates)
        finally:
            self.lib.distill_model_info_free(info)


class Session:
    """One distill_session: ``render`` returns ``(channels, frames)`` float32 audio."""

    def __init__(self, library: Library, config: Config) -> None:
        self.lib = library.lib
        self.channels = config.channels
        error = ctypes.create_string_buffer(512)
        self.handle = self.lib.distill_open(ctypes.byref(config), error, 512)
        if not self.handle:
            raise ValueError(error.value.decode())
        self._planes = np.zeros((config.channels, config.max_frames), np.float32)
        row = ctypes.POINTER(ctypes.c_float)
        self._pointers = (row * config.channels)(*[p.ctypes.data_as(row) for p in self._planes])

    def render(self, frames: int) -> tuple[np.ndarray, int]:
        """``(audio (channels, frames), frames that came from the server)``."""
        played = self.lib.distill_render(self.handle, self._pointers, frames)
        return self._planes[:, :frames].copy(), played

    def render_interleaved(self, frames: int) -> tuple[np.ndarray, int]:
        """``(audio (frames, channels), frames that came from the server)``."""
        out = np.zeros((frames, self.channels), np.float32)
        row = ctypes.POINTER(ctypes.c_float)
        played = self.lib.distill_render_interleaved(self.handle, out.ctypes.data_as(row), frames)
        return out, played

    def render_at(self, frames: int, position: int) -> tuple[np.ndarray, int]:
        """A timeline session's audio at ``[position, position + frames)``."""
        played = self.lib.distill_render_at(self.handle, self._pointers, frames, position)
        return self._planes[:, :frames].copy(), played

    def wait_at(self, frames: int, position: int, timeout_s: float) -> bool:
        return bool(self.lib.distill_wait_at(self.handle, frames, position, timeout_s))

    def seek(self, position: int, unpaced: bool = False) -> int:
        return int(self.lib.distill_seek(self.handle, position, int(unpaced)))

    def set_slider_at(self, index: int, value: int, position: int) -> int:
        return int(self.lib.distill_set_slider_at(self.handle, index, value, position))

    def set_evolution_at(self, amount: float, position: int) -> int:
        return int(self.lib.distill_set_evolution_at(self.handle, amount, position))

    def set_stereo_width_at(self, width: float, position: int) -> int:
        return int(self.lib.distill_set_stereo_width_at(self.handle, width, position))

    def wait(self, frames: int, timeout_s: float) -> int:
        """Offline rendering: block until ``render(frames)`` plays the server's audio (or the
        session ends, or ``timeout_s``); the frames buffered."""
        return int(self.lib.distill_wait(self.handle, frames, timeout_s))

    def set_slider(self, index: int, position: int) -> int:
        return int(self.lib.distill_set_slider(self.handle, index, position))

    def set_latent(self, latent: Sequence[float]) -> int:
        values = (ctypes.c_float * len(latent))(*latent)
        return int(self.lib.distill_set_latent(self.handle, values, len(latent)))

    def set_evolution(self, amount: float) -> int:
        return int(self.lib.distill_set_evolution(self.handle, amount))

    def set_stereo_width(self, width: float) -> int:
        return int(self.lib.distill_set_stereo_width(self.handle, width))

    def stop(self) -> int:
        return int(self.lib.distill_stop(self.handle))

    def play(self) -> int:
        return int(self.lib.distill_play(self.handle))

    def set_seed(self, seed: int) -> int:
        return int(self.lib.distill_set_seed(self.handle, seed))

    @property
    def latency_frames(self) -> int:
        return int(self.lib.distill_latency_frames(self.handle))

    def status(self) -> Status:
        status = Status()
        self.lib.distill_get_status(self.handle, ctypes.byref(status))
        return status

    def close(self) -> None:
        if self.handle:
            self.lib.distill_close(self.handle)
            self.handle = None

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
