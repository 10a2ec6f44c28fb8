"""Ollama's request options (`options` of /api/generate, /api/chat, /api/embed and of a job):
the type and range of each one with a known meaning, checked before a job is queued. Pure.

Ollama itself fails a request whose option has the wrong type only when the runner reads it,
and passes out-of-range values to llama.cpp; a queued job with `"temperature": "hot"` or
`"num_predict": 1e23` would wait its turn only to fail, or run far longer than meant. Options
without a known meaning pass through (newer runtimes add some), as any finite JSON value: the
strict JSON parser (store/storable.py) has refused NaN, Infinity and huge integers already.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INT32_MAX = 2**31 - 1
INT64 = (-2**63, 2**63 - 1)
MAX_STOP_SEQUENCES = 64
MAX_STOP_CHARS = 1000


@dataclass(frozen=True)
class Rule:
    kind: str                      # "int", "float", "bool" or "stop"
    low: float | None = None
    high: float | None = None
    special: tuple[int, ...] = ()  # allowed besides the range (num_predict's -1 and -2)

    def describe(self) -> str:
        noun = {"int": "an integer", "float": "a number", "bool": "true or false"}[self.kind]
        if self.low is not None and self.high is not None:
            span = f" from {_num(self.low)} to {_num(self.high)}"
        elif self.low is not None:
            span = f" of at least {_num(self.low)}"
        else:
            span = ""
        extra = f" (or {' or '.join(str(s) for s in self.special)})" if self.special else ""
        return f"must be {noun}{span}{extra}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _int(low: float | None = None, high: float | None = INT32_MAX, special: tuple[int, ...] = ()) -> Rule:
    return Rule("int", low, high, special)


def _float(low: float | None = None, high: float | None = None) -> Rule:
    return Rule("float", low, high)


# Ollama's api.Options and api.Runner (and older releases' ones), with ranges that llama.cpp
# gives a meaning; generous where it is silent, so that no real client's request is refused.
RULES: dict[str, Rule] = {
    "num_predict": _int(0, INT32_MAX, special=(-1, -2)),   # -1: until the model stops; -2: fill the context
    "num_keep": _int(-1),
    "seed": _int(*INT64),
    "top_k": _int(-1),
    "repeat_last_n": _int(-1),
    "mirostat": _int(0, 2),
    "num_ctx": _int(1),
    "num_batch": _int(1),
    "num_gpu": _int(-1),
    "main_gpu": _int(0),
    "num_thread": _int(0),
    "temperature": _float(0, 100),
    "top_p": _float(0, 1),
    "min_p": _float(0, 1),
    "typical_p": _float(0, 1),
    "tfs_z": _float(0, 100),
    "repeat_penalty": _float(0, 100),
    "presence_penalty": _float(-100, 100),
    "frequency_penalty": _float(-100, 100),
    "mirostat_tau": _float(0, 100),
    "mirostat_eta": _float(0, 100),
    "penalize_newline": Rule("bool"),
    "use_mmap": Rule("bool"),
    "use_mlock": Rule("bool"),
    "numa": Rule("bool"),
    "low_vram": Rule("bool"),
    "f16_kv": Rule("bool"),
    "vocab_only": Rule("bool"),
    "logits_all": Rule("bool"),
    "stop": Rule("stop"),
}


def option_error(options: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(field, message) for the first option with the wrong type or out of its range; None when
    all are fine. `None` as a value means "unset" and passes, as in Ollama."""
    for name, value in (options or {}).items():
        rule = RULES.get(name)
        if rule is None or value is None:
            continue
        problem = _problem(rule, value)
        if problem:
            return f"options.{name}", problem
    return None


def _problem(rule: Rule, value: Any) -> str | None:
    if rule.kind == "stop":
        return _stop_problem(value)
    if rule.kind == "bool":
        return None if isinstance(value, bool) else rule.describe()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return rule.describe()
    if not math.isfinite(value):
        return rule.describe()
    if rule.kind == "int":
        if isinstance(value, float) and not value.is_integer():
            return rule.describe()              # 5.0 is 5, as in Ollama; 5.5 is no integer
        if int(value) in rule.special:
            return None
    if (rule.low is not None and value < rule.low) or (rule.high is not None and value > rule.high):
        return rule.describe()
    return None


def _stop_problem(value: Any) -> str | None:
    stops = value                               # a list, as Ollama takes it (a lone string is refused there)
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        return "must be a list of strings"
    if len(stops) > MAX_STOP_SEQUENCES:
        return f"may hold at most {MAX_STOP_SEQUENCES} sequences"
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        return f"sequences may be at most {MAX_STOP_CHARS} characters"
    return None
