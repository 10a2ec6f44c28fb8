"""The llama.cpp binding, behind a small interface so that another binding (llama-cpp-python,
say) could take xllamacpp's place without touching the runner.

A binding loads one model and answers OpenAI-style completion and chat requests, calling
`on_piece(text)` for each piece of text as it is generated; `on_piece` returning True stops the
generation (the client went away). It returns what the runtime needs for Ollama's final answer.
An embedding model's binding answers `embed` instead (and 400 to the others).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

OnPiece = Callable[[str], bool]


class BindingError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Answer:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    prompt_ms: float = 0.0
    output_tokens: int = 0
    output_ms: float = 0.0
    stopped: bool = False          # the caller asked to stop
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    prompt_ms: float


class LoadedModel(Protocol):
    def complete(self, request: dict[str, Any], on_piece: OnPiece | None) -> Answer: ...

    def chat(self, request: dict[str, Any], on_piece: OnPiece | None) -> Answer: ...

    def embed(self, request: dict[str, Any]) -> Embeddings:
        """`request`: {"input": [str], "truncate": bool}; vectors L2-normalised."""
        ...

    def close(self) -> None: ...


def _raise_if_error(result: Any) -> None:
    if isinstance(result, dict):
        error = result.get("error")
        if isinstance(error, dict):
            raise BindingError(int(error.get("code") or 500), str(error.get("message") or error))
        if error:
            raise BindingError(500, str(error))
        if "code" in result and "message" in result and "choices" not in result:
            raise BindingError(int(result["code"] or 500), str(result["message"]))


def _answer_from(result: dict[str, Any], text: str | None = None) -> Answer:
    _raise_if_error(result)
    timings = result.get("timings") or {}
    usage = result.get("usage") or {}
    choice = (result.get("choices") or [{}])[0]
    if text is None:
        text = choice.get("text")
        if text is None:
            text = (choice.get("message") or {}).get("content") or ""
    return Answer(text=text, finish_reason=choice.get("finish_reason"),
                  prompt_tokens=int(timings.get("prompt_n") or usage.get("prompt_tokens") or 0),
                  prompt_ms=float(timings.get("prompt_ms") or 0.0),
                  output_tokens=int(timings.get("predicted_n") or usage.get("completion_tokens") or 0),
                  output_ms=float(timings.get("predicted_ms") or 0.0))


class XllamacppModel:
    """One model loaded with xllamacpp's `Server` (llama.cpp's server loop, in process)."""

    def __init__(self, path: str, n_ctx: int, n_threads: int, n_parallel: int, prompt_cache_mib: int = 0):
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = path
        params.n_ctx = n_ctx * n_parallel            # llama.cpp splits the context between slots
        params.n_parallel = n_parallel
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        # Read the weights into memory instead of mapping them: the process's RSS is then what the
        # model really takes, which is what the scheduler budgets with.
        params.load_mode = xllamacpp.llama_load_mode.LLAMA_LOAD_MODE_NONE
        # llama.cpp keeps earlier prompts' KV state in host memory, 8 GiB of it by default: a runner
        # would then outgrow what it was budgeted at (EMBEDDED_PROMPT_CACHE_MIB; 0, none, as in Ollama)
        if hasattr(params, "cache_ram_mib"):      # xllamacpp before it had no such cache
            params.cache_ram_mib = prompt_cache_mib
        self._server = xllamacpp.Server(params)

    def _run(self, handler: Callable, request: dict[str, Any], on_piece: OnPiece | None, chat: bool) -> Answer:
        if on_piece is None:
            result = handler({**request, "stream": False})
            return _answer_from(result)
        pieces: list[str] = []
        last: dict[str, Any] = {}
        stopped = [False]
        errors: list[dict[str, Any]] = []

        def callback(chunk: dict[str, Any]) -> bool:
            # Exceptions raised here are swallowed by the binding: note the error, stop, raise later.
            nonlocal last
            if "error" in chunk or ("code" in chunk and "message" in chunk):
                errors.append(chunk)
                return True
            choice = (chunk.get("choices") or [{}])[0]
            piece = ((choice.get("delta") or {}).get("content") if chat else choice.get("text")) or ""
            if chunk.get("timings") or choice.get("finish_reason"):
                last = chunk
            if piece:
                pieces.append(piece)
                if on_piece(piece):
                    stopped[0] = True
                    return True
            return False

        handler({**request, "stream": True}, callback)
        if errors:
            _raise_if_error(errors[0])
        answer = _answer_from(last or {"choices": [{}]}, "".join(pieces))
        answer.stopped = stopped[0]
        return answer

    def complete(self, request: dict[str, Any], on_piece: OnPiece | None) -> Answer:
        return self._run(self._server.handle_completions, request, on_piece, chat=False)

    def chat(self, request: dict[str, Any], on_piece: OnPiece | None) -> Answer:
        return self._run(self._server.handle_chat_completions, request, on_piece, chat=True)

    def embed(self, request: dict[str, Any]) -> Embeddings:
        raise BindingError(400, "this model does not support embeddings")

    def close(self) -> None:
        self._server = None


def _numpy_bert(path: str, n_ctx: int, n_threads: int, n_parallel: int, prompt_cache_mib: int = 0) -> LoadedModel:
    from embedded_runtime.bert import BertModel  # numpy, safetensors, tokenizers: only where used
    return BertModel(path)


BINDINGS: dict[str, Callable[..., LoadedModel]] = {"xllamacpp": XllamacppModel, "numpy-bert": _numpy_bert}


def load(path: str, n_ctx: int, n_threads: int, n_parallel: int, binding: str = "xllamacpp",
         prompt_cache_mib: int = 0) -> LoadedModel:
    try:
        factory = BINDINGS[binding]
    except KeyError:
        raise BindingError(500, f"unknown binding {binding!r}; available: {', '.join(BINDINGS)}") from None
    return factory(path, n_ctx, n_threads, n_parallel, prompt_cache_mib)
