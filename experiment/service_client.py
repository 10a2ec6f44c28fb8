"""The experiment's side of the service's HTTP API: model calls are jobs submitted to
`/api/submit` and awaited with long polls; tasks and results go to `/api/tasks` and
`/api/experiments/<experiment>/results`."""
from __future__ import annotations

import time
import uuid
from typing import Any

import requests
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from experiment.strategies import ModelAnswer

FINISHED = {"complete", "failed", "cancelled"}
POLL_S = 60.0
MAX_RESULTS = 1000                    # the service's largest page of results
NO_CHAT = "does not support chat"      # the runtime's answer to a chat for a model without a chat template


TURN = "\n### "                      # where as_completion's next turn would begin


def as_completion(messages: list[dict[str, str]]) -> str:
    """A conversation as the plain text a base model continues: each turn under its role, ending
    where the assistant's next turn begins."""
    turns = [f"### {m['role'].capitalize()}:\n{m['content'].strip()}" for m in messages]
    return "\n\n".join(turns) + "\n\n### Assistant:\n"


class ServiceError(RuntimeError):
    """The service refused a request (its status and error message)."""


CANCEL_WITHIN_S = 20.0         # how long an interrupted run spends cancelling its jobs
CONNECT_PATIENCE_S = 30.0      # how long a call retries a service that does not answer (it may be restarting)


class ServiceClient:
    def __init__(self, url: str, api_key: str | None = None, options: dict[str, Any] | None = None,
                 timeout_s: float | None = None, priority: str = "normal",
                 connect_patience_s: float = CONNECT_PATIENCE_S):
        self.url = url.rstrip("/")
        self._retrying = retry(retry=retry_if_exception_type(requests.ConnectionError),
                               stop=stop_after_delay(connect_patience_s),
                               wait=wait_exponential(multiplier=0.2, max=3), reraise=True)
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.options = options if options is not None else {"temperature": 0, "num_predict": 300}
        self.timeout_s = timeout_s
        self.priority = priority
        self.completion_only: set[str] = set()     # base models: asked by generate, not chat
        # job id -> (asked as a chat, the submission): a refused chat is asked again as a completion
        self._asked: dict[str, tuple[bool, tuple[str, list[dict[str, str]], dict[str, Any], dict[str, Any] | None]]] = {}

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._retrying(self._call_once)(method, path, **kwargs)
        return result

    def _call_once(self, method: str, path: str, timeout: float = POLL_S + 30, **kwargs: Any) -> dict[str, Any]:
        response = self.session.request(method, self.url + path, timeout=timeout, **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json().get("error")
            except ValueError:
                message = response.text[:200]
            raise ServiceError(f"{method} {path}: {response.status_code} {message}")
        return response.json()

    # --- ModelCalls ---------------------------------------------------------------------------
    def submit(self, model: str, messages: list[dict[str, str]], tags: dict[str, Any],
               options: dict[str, Any] | None = None) -> str:
        """A chat job; for a base model (no chat template: its runtime refused a chat before), a
        generate job of the conversation written out as plain text (`as_completion`)."""
        body: dict[str, Any] = {"model": model, "options": {**self.options, **(options or {})},
                                "priority": self.priority, "metadata": tags}
        chat = model not in self.completion_only
        if chat:
            body.update(kind="chat", messages=messages)
        else:                      # a base model would go on to write the next turns itself: stop there
            body.update(kind="generate", prompt=as_completion(messages))
            body["options"]["stop"] = [*body["options"].get("stop", []), TURN]
        if self.timeout_s is not None:
            body["timeout_s"] = self.timeout_s
        # a retried submission (the connection dropped) must not queue the job twice
        key = uuid.uuid4().hex
        job_id: str = self._call("POST", "/api/submit", json=body, headers={"Idempotency-Key": key})["job_id"]
        self._asked[job_id] = (chat, (model, messages, tags, options))
        return job_id

    def answer(self, job_id: str) -> ModelAnswer:
        while True:
            job = self._call("GET", f"/api/job/{job_id}", params={"wait": POLL_S})
            if job["status"] in FINISHED:
                break
        was_chat, asked = self._asked.pop(job_id, (False, None))
        if job["status"] != "complete":
            error = job.get("error") or job["status"]
            if was_chat and asked is not None and NO_CHAT in error:
                # a base model: ask again as a completion (every chat of a batch sent before the
                # first refusal came back is refused too; the refused job is no attempt's job)
                self.completion_only.add(asked[0])
                return self.answer(self.submit(*asked))
            return ModelAnswer(job_id, "", error)
        result = job.get("result") or {}
        text = (result.get("message") or {}).get("content") if "message" in result else result.get("response")
        return ModelAnswer(job_id, text or "")

    def cancel_unanswered(self, within_s: float = CANCEL_WITHIN_S) -> int:
        """Cancel the jobs submitted and not answered yet (a run interrupted part way: they would
        keep the models busy for nothing), giving up after `within_s` (a service that hangs);
        how many were cancelled."""
        deadline = time.monotonic() + within_s
        cancelled = 0
        unanswered, self._asked = list(self._asked), {}
        for job_id in unanswered:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self._call_once("POST", f"/api/job/{job_id}/cancel", timeout=min(5.0, left))
                cancelled += 1
            except (ServiceError, requests.RequestException):
                pass              # it finished meanwhile (409), or the service is gone
        return cancelled

    def job_entries(self, job_id: str) -> list[dict[str, Any]]:
        """The ledger entries of one job (every run of it); none for a job that never ran."""
        entries: list[dict[str, Any]] = self._call("GET", "/api/ledger",
                                                   params={"job_id": job_id, "limit": 100})["entries"]
        return entries

    # --- tasks and results --------------------------------------------------------------------
    def put_tasks(self, tasks: list[dict[str, Any]]) -> int:
        return self._call("POST", "/api/tasks", json={"tasks": tasks})["stored"]

    def record_result(self, experiment: str, result: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/api/experiments/{experiment}/results", json=result)

    def results(self, experiment: str, strategy: str | None = None) -> list[dict[str, Any]]:
        """The results recorded for `experiment` (one strategy's), at most MAX_RESULTS: past that a
        ServiceError, never a silent cut."""
        params: dict[str, Any] = {"limit": MAX_RESULTS, **({"strategy": strategy} if strategy else {})}
        results: list[dict[str, Any]] = self._call("GET", f"/api/experiments/{experiment}/results",
                                                   params=params)["results"]
        if len(results) >= MAX_RESULTS:
            raise ServiceError(f"{experiment} has {MAX_RESULTS} or more results for {strategy or 'its strategies'}: "
                               "more than one listing holds")
        return results

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/api/health")
