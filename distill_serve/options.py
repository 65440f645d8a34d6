"""Command-line options bound to config dataclass fields: each option is declared once (its
flag, help and, unless given, the field's own default), and the config is built from the
parsed arguments by field name (:func:`fields_from`)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def field_option(parser: Any, config: type, field: str, *flags: str, **kwargs: Any) -> None:
    """Add ``flags`` to ``parser`` (a parser or an argument group) for ``config.field``."""
    if "default" not in kwargs:
        found = {f.name: f for f in dataclasses.fields(config)}[field]
        if found.default is not dataclasses.MISSING:
            kwargs["default"] = found.default
        elif found.default_factory is not dataclasses.MISSING:
            kwargs["default"] = found.default_factory()
    if kwargs.get("action") not in ("store_true", "store_false") and "choices" not in kwargs:
        kwargs.setdefault("metavar", flags[0].lstrip("-").upper().replace("-", "_"))
    parser.add_argument(*flags, dest=f"{config.__name__}.{field}", **kwargs)


def fields_from(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The values of ``config``'s options in ``args``, by field name."""
    prefix = f"{config.__name__}."
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}
