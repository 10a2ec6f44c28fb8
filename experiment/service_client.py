"""The experiment's side of the service's HTTP API: model calls are jobs submitted to
`/api/submit` and awaited with long polls; tasks and results go to `/api/tasks` and
`/api/experiments/<experiment>/results`."""
from __future__ import annotations

import uuid
from typing import Any

import requests
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from experiment.strategies import ModelAnswer

FINISHED = {"complete", "failed", "cancelled"}
POLL_S = 60.0


class ServiceError(RuntimeError):
    """The service refused a request (its status and error message)."""


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

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._retrying(self._call_once)(method, path, **kwargs)
        return result

    def _call_once(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.session.request(method, self.url + path, timeout=POLL_S + 30, **kwargs)
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
        body: dict[str, Any] = {"model": model, "kind": "chat", "messages": messages,
                                "options": {**self.options, **(options or {})},
                "priority": self.priority, "metadata": tags}
        if self.timeout_s is not None:
            body["timeout_s"] = self.timeout_s
        # a retried submission (the connection dropped) must not queue the job twice
        key = uuid.uuid4().hex
        return self._call("POST", "/api/submit", json=body, headers={"Idempotency-Key": key})["job_id"]

    def answer(self, job_id: str) -> ModelAnswer:
        while True:
            job = self._call("GET", f"/api/job/{job_id}", params={"wait": POLL_S})
            if job["status"] in FINISHED:
                break
        if job["status"] != "complete":
            return ModelAnswer(job_id, "", job.get("error") or job["status"])
        result = job.get("result") or {}
        text = (result.get("message") or {}).get("content") if "message" in result else result.get("response")
        return ModelAnswer(job_id, text or "")

    # --- tasks and results --------------------------------------------------------------------
    def put_tasks(self, tasks: list[dict[str, Any]]) -> int:
        return self._call("POST", "/api/tasks", json={"tasks": tasks})["stored"]

    def record_result(self, experiment: str, result: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/api/experiments/{experiment}/results", json=result)

    def results(self, experiment: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/experiments/{experiment}/results")["results"]

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/api/health")
