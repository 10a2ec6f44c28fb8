"""The store's part for answers outside the job record: the opt-in result cache, and the pieces
of an answer being streamed, relayed from the process that runs the job to the one that holds
the client's connection (another gunicorn worker, or another host)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class AnswerStore(ABC):
    @abstractmethod
    def cache_get(self, key: str, now: float) -> dict[str, Any] | None:
        """The cached answer stored under `key`, unless expired."""

    @abstractmethod
    def cache_put(self, key: str, answer: dict[str, Any], expires_at: float) -> None:
        """Store (or replace) the answer under `key`."""

    @abstractmethod
    def purge_cache(self, now: float) -> int:
        """Delete expired cached answers; return how many."""

    @abstractmethod
    def append_pieces(self, job_id: str, run_id: str, seq: int, pieces: list[dict[str, Any]], now: float) -> None:
        """Add batch `seq` (0, 1, ...) of run `run_id`'s streamed pieces of `job_id`'s answer
        (idempotent per (job_id, run_id, seq))."""

    @abstractmethod
    def read_pieces(self, job_id: str, skip: int = 0) -> list[tuple[str, list[dict[str, Any]]]]:
        """(run_id, pieces) of each batch of `job_id` in the order written, but the first `skip`."""

    @abstractmethod
    def drop_pieces(self, job_id: str | None = None, before: float | None = None) -> int:
        """Delete the streamed pieces of a job, or those written before `before`."""
