"""The job API's own request (`POST /api/submit`, SubmitRequest), validated by pydantic; errors
name the field. The OpenAPI document's submit schema is generated from it (openapi/spec.py)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from front_door.ollama_options import option_error
from front_door.ollama_shapes import MAX_MODEL_NAME
from jobs.model import JobKind, Priority


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None


class SubmitRequest(BaseModel):
    """POST /api/submit. Unknown fields are ignored."""
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME)
    kind: JobKind = JobKind.GENERATE
    priority: Priority = Priority.NORMAL
    prompt: str | None = None
    system: str | None = None
    messages: list[Message] | None = None
    input: str | list[str] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    images: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | int | None = Field(default=None, gt=0)
    format: str | dict[str, Any] | None = None
    think: bool | str | None = None
    tools: list[dict[str, Any]] | None = None
    cache: bool = Field(default=False, description="Answer from the result cache when an identical request was answered.")

    @field_validator("kind", "priority", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        # strict mode wants enum members; the API takes their string values, in any case
        if isinstance(value, str):
            for enum in (JobKind, Priority):
                try:
                    return enum(value.strip().lower())
                except ValueError:
                    continue
        return value

    @field_validator("model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        value = value.strip()
        if not value or any(c.isspace() for c in value):
            raise ValueError("must be a model name such as 'qwen2.5:0.5b'")
        return value

    @field_validator("messages")
    @classmethod
    def _storable_message_keys(cls, value: list[Message] | None) -> list[Message] | None:
        problem = storable_keys_error([m.model_dump() for m in value or []])
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("metadata", "options")
    @classmethod
    def _storable_keys(cls, value: Any) -> Any:
        problem = storable_keys_error(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("options")
    @classmethod
    def _known_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = option_error(value)
        if problem:
            raise FieldError(*problem)
        return value

    @model_validator(mode="after")
    def _content_for_kind(self) -> SubmitRequest:
        if self.kind is JobKind.GENERATE and self.prompt is None:
            raise FieldError("prompt", "is required for kind 'generate'")
        if self.kind is JobKind.CHAT and not self.messages:
            raise FieldError("messages", "must be a non-empty list for kind 'chat'")
        if self.kind is JobKind.EMBED and self.input is None and self.prompt is None:
            raise FieldError("input", "is required for kind 'embed' (a string or a list of strings)")
        return self


class FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message


INT64 = range(-2**63, 2**63)         # BSON's widest integer


def storable_keys_error(value: Any) -> str | None:
    """Why `value` cannot be stored as it is (MongoDB field names, BSON integers), or None."""
    bad = sorted(_bad_keys(value))
    if bad:
        return f"keys may not start with '$' or contain '.' or NUL: {', '.join(bad)}"
    wide = sorted(_wide_integers(value))
    return f"integers must fit in 64 bits: {', '.join(wide)}" if wide else None


def _bad_keys(value: Any, prefix: str = "") -> list[str]:
    bad = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if not isinstance(key, str) or key.startswith("$") or "." in key or "\0" in key:
                bad.append(prefix + repr(key).strip("'") if isinstance(key, str) else prefix + str(key))
            bad.extend(_bad_keys(inner, f"{prefix}{key}/"))
    elif isinstance(value, list):
        for item in value:
            bad.extend(_bad_keys(item, prefix))
    return bad


def _wide_integers(value: Any, where: str = "") -> list[str]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [] if value in INT64 else [where or "value"]
    if isinstance(value, dict):
        return [w for key, inner in value.items() for w in _wide_integers(inner, f"{where}/{key}" if where else str(key))]
    if isinstance(value, list):
        return [w for n, item in enumerate(value) for w in _wide_integers(item, f"{where}[{n}]")]
    return []


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_type_tag(part: object) -> bool:
    """pydantic names the member of a union it tried (`timeout_s.float`): not a field."""
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part)


def describe_validation_error(exc: ValidationError) -> tuple[str, str, list[dict[str, Any]]]:
    """(field, message, details) for a 400 answer, naming the first offending field."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err.get("loc", ()) if not _is_type_tag(p)) or "body"
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, FieldError):
            loc, msg = ctx_error.field, ctx_error.message
        else:
            msg = err.get("msg", "is invalid")
        details.append({"field": loc, "message": msg})
    first = details[0] if details else {"field": "body", "message": "is invalid"}
    return first["field"], f"{first['field']}: {first['message']}", details
