"""Logging as `[HH:MM:SS.mmm] [COMPONENT] message`, to the log file and to stderr.

Each component logs through `get_logger("SCHEDULER")` and so on; the component name is the
logger's last dotted part, so the standard logging machinery (levels, handlers) stays in charge.

A record is one line whatever a client put in it: control characters in the message (a CR/LF in
a node URL, a model name, a header) are escaped, and a traceback's lines are indented under their
record. The HTTP servers' own loggers (werkzeug, gunicorn) get the same escaping as a filter.
"""
from __future__ import annotations

import logging
import logging.handlers
import re
import sys
import time
from pathlib import Path

_ROOT = "model_manager"


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` with every control character written out (`\\n`, `\\r`, `\\t`, `\\x1b`, ...), so that a
    value a client sent can never start a line of its own in the log, or rewrite one on a terminal."""
    return _CONTROLS.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"
                                              if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}"), text)


class ComponentFormatter(logging.Formatter):
    """One line per record: the message (its arguments, whatever a client put in them, included)
    has its control characters escaped; a traceback follows on lines of its own, each indented,
    so that no line of it reads as a record."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        component = record.name.rsplit(".", 1)[-1] if record.name.startswith(_ROOT + ".") else "SYSTEM"
        line = f"[{clock}.{int(record.msecs):03d}] [{component}] {escape_controls(record.getMessage())}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join("\n    " + escape_controls(part) for part in trace.split("\n"))
        if record.stack_info:
            line += "".join("\n    " + escape_controls(part) for part in record.stack_info.split("\n"))
        return line


class EscapingFilter(logging.Filter):
    """Escapes control characters in a record's message and arguments, for loggers whose lines
    another formatter writes (the HTTP servers' own: werkzeug's, gunicorn's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = escape_controls(record.msg)
        if isinstance(record.args, dict):
            record.args = {k: _escaped_arg(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_escaped_arg(a) for a in record.args)
        return True


def _escaped_arg(value: object) -> object:
    if value is None or isinstance(value, (int, float)):
        return value                     # %d and %f still apply; numbers hold no control characters
    return escape_controls(value if isinstance(value, str) else str(value))


SERVER_LOGGERS = ("werkzeug", "gunicorn.error", "gunicorn.access")


def get_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"{_ROOT}.{component.upper()}")


def setup_logging(log_file: Path | None, level: str = "INFO", stderr: bool = True,
                  max_bytes: int = 20 * 1024 * 1024, backups: int = 5) -> None:
    """Send every component's records to `log_file`, rotated at `max_bytes` with `backups`
    old files kept (and to stderr). Safe to call more than once."""
    root = logging.getLogger(_ROOT)
    root.setLevel(level)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = ComponentFormatter()
    handlers: list[logging.Handler] = []
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups,
                                                             encoding="utf-8"))
    if stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    for name in SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        if not any(isinstance(f, EscapingFilter) for f in server_logger.filters):
            server_logger.addFilter(EscapingFilter())
