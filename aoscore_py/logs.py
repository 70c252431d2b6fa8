"""Structured logs: one line per event, `key=value` pairs (logfmt) or JSON.

An operator reading at 3 a.m. wants: what happened (`event`), to which item, and what next.
Use `get_logger(component)` and pass fields as keywords:

    log = get_logger("updatemanager")
    log.info("phase.entered", phase="downloading", items=2)
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_FORMAT = "logfmt"

MIB = 1 << 20


def mib(n: float) -> str:
    """A byte count as log lines and messages show it: `12.3 MiB`."""
    return f"{n / MIB:.1f} MiB"


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if text == "" or any(c in text for c in ' ="\n\t'):
        return orjson.dumps(text).decode()
    return text


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": record.name.removeprefix("aoscore."),
            "event": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            fields[f"{key}_" if key in fields else key] = value
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        if _FORMAT == "json":
            return orjson.dumps(fields, default=str).decode()
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


class StructLogger:
    """A thin wrapper over `logging.Logger` that takes fields as keywords."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any], /) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, /, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, /, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, /, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, /, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)


def get_logger(component: str) -> StructLogger:
    """The logger of one component, such as ``updatemanager`` or ``sm.docker``."""
    return StructLogger(logging.getLogger(f"aoscore.{component}"))


def settings() -> tuple[str, str]:
    """The level and format `configure` set, for a child process to log as its parent does."""
    level = logging.getLevelName(logging.getLogger("aoscore").getEffectiveLevel()).lower()
    return (level if level in ("debug", "info", "warning", "error") else "info"), _FORMAT


def configure(level: str = "info", fmt: str = "logfmt", stream: Any = None) -> None:
    """Send aoscore logs to `stream` (stderr by default) in `fmt` ("logfmt" or "json")."""
    global _FORMAT
    _FORMAT = fmt
    root = logging.getLogger("aoscore")
    root.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
