"""Logging as `[HH:MM:SS.mmm] [COMPONENT] message`, to the log file and to stderr.

Each component logs through `get_logger("SCHEDULER")` and so on; the component name is the
logger's last dotted part, so the standard logging machinery (levels, handlers) stays in charge.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path

COMPONENTS = ("SYSTEM", "API", "QUEUE", "SCHEDULER", "ENGINE", "MONITOR", "REGISTRY", "STORE",
              "RUNTIME", "SIM")
_ROOT = "model_manager"


class ComponentFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        component = record.name.rsplit(".", 1)[-1] if record.name.startswith(_ROOT + ".") else "SYSTEM"
        line = f"[{clock}.{int(record.msecs):03d}] [{component}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


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
