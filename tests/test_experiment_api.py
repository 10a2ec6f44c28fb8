"""Tasks and experiment results over HTTP, on the GPU simulator: the service derives each
result's costs from the ledger of the jobs it names, and refuses what it cannot vouch for."""
import json

import pytest

from experiment.service_client import ServiceClient
from experiment.tasks import select_tasks


@pytest.fixture(scope="module")
def api(module_service):
    service, client = module_service()
    return client


def post(client, path, body):
    return client.post(path, data=json.dumps(body) if not isinstance(body, bytes) else body,
                       content_type="application/json")


def finished_job(client, experiment, task_id="t1", strategy="large", model="qwen2.5:0.5b"):
    body = {"model": model, "kind": "chat", "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"experiment": experiment, "strategy": strategy, "task_id": task_id, "branch": 0}}
    r = client.post("/api/submit?wait=20", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_tasks_are_stored_listed_and_read_back_by_id(api):
    tasks = select_tasks("humaneval:2+builtin:1")
    r = post(api, "/api/tasks", {"tasks": tasks})
    assert r.status_code == 200 and r.get_json()["stored"] == 3
    listed = api.get("/api/tasks?suite=humaneval").get_json()["tasks"]
    assert [t["task_id"] for t in listed] == ["HumanEval/0", "HumanEval/1"]
    one = api.get("/api/tasks/HumanEval/1").get_json()
    assert one["check"]["entry_point"] == tasks[1]["check"]["entry_point"] and one["prompt"] == tasks[1]["prompt"]
    assert api.get("/api/tasks/HumanEval/999").status_code == 404


@pytest.mark.parametrize("body, field", [
    (b"{nope", "body"), ({"tasks": []}, "tasks"), ({"tasks": [{"task_id": "x"}]}, "tasks.0.suite"),
    ({"tasks": [{"task_id": "x", "suite": "s", "prompt": "p", "check": {"kind": "vibes"}}]}, "tasks.0.check.kind"),
    ({"tasks": [{"task_id": "x", "suite": "s", "prompt": "p", "check": {"kind": "exact", "answer": 1, "$where": 1}}]}, "tasks"),
    # what MongoDB cannot store: a NUL in a key, an integer wider than 64 bits
    ({"tasks": [{"task_id": "x", "suite": "s", "prompt": "p", "check": {"kind": "exact", "answer": 1, "a\u0000b": 1}}]},
     "tasks"),
    ({"tasks": [{"task_id": "x", "suite": "s", "prompt": "p", "check": {"kind": "exact", "answer": 1},
                 "extra": {"n": 2**64}}]}, "tasks.0.extra.n"),
    # a check that could never be run
    ({"tasks": [{"task_id": "x", "suite": "s", "prompt": "p", "check": {"kind": "python_tests", "test": "x"}}]},
     "tasks.0.check"),
    ({"tasks": [{"task_id": "x", "suite": "s", "prompt": "p", "check": {"kind": "exact"}}]}, "tasks.0.check"),
    ({"tasks": [{"task_id": "x", "suite": "s", "prompt": "p",
                 "check": {"kind": "python_tests", "test": "x", "entry_point": "not a name"}}]},
     "tasks.0.check.entry_point"),
])
def test_bad_tasks_are_refused_with_the_field(api, body, field):
    r = post(api, "/api/tasks", body)
    assert r.status_code == 400 and r.get_json()["field"] == field, r.get_json()


def test_a_result_gets_its_costs_from_the_ledger_of_its_jobs(api):
    jobs = [finished_job(api, "exp-a", strategy="branched", model=m) for m in ("qwen2.5:0.5b", "qwen2.5:0.5b",
                                                                              "gemma:2b")]
    r = post(api, "/api/experiments/exp-a/results", {"task_id": "t1", "strategy": "branched", "solved": True,
                                                      "attempts": 3, "job_ids": [j["job_id"] for j in jobs],
                                                      "eval_s": 0.25})
    assert r.status_code == 201, r.get_json()
    doc = r.get_json()
    metrics = [j["metrics"] for j in jobs]
    assert doc["model_s"] == pytest.approx(sum(m["run_s"] for m in metrics), abs=1e-3)
    assert doc["tokens"] == sum(m["prompt_tokens"] + m["output_tokens"] for m in metrics)
    assert doc["models"] == ["gemma:2b", "qwen2.5:0.5b"] and doc["runs"] == 3 and doc["eval_s"] == 0.25
    assert doc["wall_s"] > 0
    # the simulated GPU reports energy; the ledger splits it among the jobs that shared it
    assert doc["energy_j"] == pytest.approx(sum(m["gpu_energy_j"] for m in metrics), abs=1e-2)
    stored = api.get("/api/experiments/exp-a/results").get_json()["results"]
    assert [(s["task_id"], s["strategy"], s["tokens"]) for s in stored] == [("t1", "branched", doc["tokens"])]


def result(job_ids, task_id="t", strategy="large"):
    return {"task_id": task_id, "strategy": strategy, "solved": False, "attempts": len(set(job_ids)),
            "job_ids": job_ids}


def test_a_results_models_and_jobs_are_the_ledgers_not_the_clients(api):
    job = finished_job(api, "exp-m", task_id="t", strategy="large", model="gemma:2b")
    claimed = {**result([job["job_id"], job["job_id"]]), "models": ["a-much-larger:70b"]}
    r = post(api, "/api/experiments/exp-m/results", claimed)
    assert r.status_code == 201, r.get_json()
    doc = r.get_json()
    assert doc["models"] == ["gemma:2b"] and doc["job_ids"] == [job["job_id"]] and doc["runs"] == 1
    fewer = {**result([job["job_id"], finished_job(api, "exp-m", task_id="t")["job_id"]]), "attempts": 1}
    r = post(api, "/api/experiments/exp-m/results", fewer)
    assert r.status_code == 400 and "every job is an attempt" in r.get_json()["error"]


def test_results_for_jobs_that_are_unknown_unfinished_or_tagged_otherwise_are_refused(api):
    other = finished_job(api, "exp-other")
    r = post(api, "/api/experiments/exp-b/results", result([other["job_id"]]))
    assert r.status_code == 422 and r.get_json()["job_id"] == other["job_id"]
    mine = finished_job(api, "exp-b", task_id="t", strategy="large")
    for task_id, strategy in (("another-task", "large"), ("t", "branched")):
        r = post(api, "/api/experiments/exp-b/results", result([mine["job_id"]], task_id, strategy))
        assert r.status_code == 422, (task_id, strategy)
    assert post(api, "/api/experiments/exp-b/results", result(["0" * 32])).status_code == 404
    long = api.post("/api/submit", data=json.dumps({
        "model": "qwen2.5:0.5b", "prompt": "x", "options": {"num_predict": 1500},
        "metadata": {"experiment": "exp-b", "task_id": "t", "strategy": "large"}}),
        content_type="application/json").get_json()
    r = post(api, "/api/experiments/exp-b/results", result([long["job_id"]]))
    assert r.status_code == 409 and "record results after its jobs finish" in r.get_json()["error"]
    api.post(f"/api/job/{long['job_id']}/cancel")
    assert post(api, "/api/experiments/bad name!/results", {}).status_code in (400, 404)
    assert post(api, "/api/experiments/exp-b/results", {"task_id": "t"}).status_code == 400
    assert post(api, "/api/experiments/exp-b/results", b'{"task_id": "t", "strategy": "large", "solved": true, '
                b'"attempts": 1, "job_ids": ["x"], "eval_s": Infinity}').status_code == 400


def test_a_job_that_never_ran_costs_nothing_and_is_listed_as_unmetered(api):
    waiting = api.post("/api/submit", data=json.dumps({
        "model": "qwen2.5:0.5b", "prompt": "x", "priority": "low",
        "metadata": {"experiment": "exp-u", "task_id": "t", "strategy": "large"}}),
        content_type="application/json").get_json()
    cancelled = api.post(f"/api/job/{waiting['job_id']}/cancel")
    if cancelled.status_code != 200 or cancelled.get_json()["previous"] == "running":
        pytest.skip("the job started before it could be cancelled (then it is metered like any other)")
    ran = finished_job(api, "exp-u", task_id="t", strategy="large")
    r = post(api, "/api/experiments/exp-u/results", result([waiting["job_id"], ran["job_id"]]))
    assert r.status_code == 201, r.get_json()
    doc = r.get_json()
    assert doc["unmetered_job_ids"] == [waiting["job_id"]] and doc["runs"] == 1
    assert doc["tokens"] == ran["metrics"]["prompt_tokens"] + ran["metrics"]["output_tokens"]


def test_the_experiments_client_speaks_this_api(api, monkeypatch):
    """ServiceClient against the Flask app (its requests routed to the test client)."""
    client = ServiceClient("http://mm.test")

    def request(method, url, **kwargs):
        path = url.removeprefix("http://mm.test")
        r = api.open(path, method=method, json=kwargs.get("json"), query_string=kwargs.get("params"),
                     headers=kwargs.get("headers"))
        return _Response(r)
    monkeypatch.setattr(client.session, "request", request)
    job_id = client.submit("qwen2.5:0.5b", [{"role": "user", "content": "hi"}], {"experiment": "exp-c", "task_id": "t",
                                                                             "strategy": "large", "branch": 0})
    answer = client.answer(job_id)
    assert answer.error is None and answer.text.strip()
    assert client.record_result("exp-c", {"task_id": "t", "strategy": "large", "solved": True, "attempts": 1,
                                          "job_ids": [job_id]})["tokens"] > 0
    assert [r["task_id"] for r in client.results("exp-c")] == ["t"]


class _Response:
    def __init__(self, r):
        self.status_code, self._r, self.text = r.status_code, r, r.get_data(as_text=True)

    def json(self):
        return self._r.get_json()


def base_model_service(monkeypatch, client: ServiceClient, answer: str) -> dict[str, dict]:
    """The client's calls answered as the embedded runtime answers a model without a chat template
    (gemma3:270m): a chat job fails with its 400 refusal, a generate job completes with `answer`.
    Returns the submitted jobs by id."""
    jobs: dict[str, dict] = {}

    def call(method, path, **kwargs):
        if method == "POST" and path == "/api/submit":
            job_id = f"j{len(jobs)}"
            jobs[job_id] = kwargs["json"]
            return {"job_id": job_id}
        body = jobs[path.rsplit("/", 1)[1]]
        if body["kind"] == "chat":
            return {"status": "failed", "error": 'runtime refused (400): "base" does not support chat: it has no chat template'}
        return {"status": "complete", "result": {"response": answer}}
    monkeypatch.setattr(client, "_call", call)
    return jobs


def test_a_base_model_refusing_chat_is_asked_again_as_a_completion(monkeypatch):
    """The embedded runtime refuses a chat for a model without a chat template (gemma3:270m): the
    client asks again by generate, with the conversation as plain text, and from then on at once."""
    client = ServiceClient("http://mm.test")
    jobs = base_model_service(monkeypatch, client, "def f():\n    return 1")
    tags = {"experiment": "e", "task_id": "t", "strategy": "branched", "branch": 0}
    messages = [{"role": "user", "content": "Write f."}]
    answer = client.answer(client.submit("base", messages, tags))
    assert answer.error is None and answer.text.startswith("def f")
    assert answer.job_id == "j1" and jobs["j1"]["kind"] == "generate" and jobs["j1"]["metadata"] == tags
    assert jobs["j1"]["prompt"] == "### User:\nWrite f.\n\n### Assistant:\n"
    assert jobs["j1"]["options"]["stop"] == ["\n### "]          # not the next turns it would invent
    client.answer(client.submit("base", messages, tags))
    assert jobs["j2"]["kind"] == "generate"                     # no chat tried again


def test_every_chat_of_a_batch_a_base_model_refused_is_asked_again(monkeypatch):
    """Sample-select and decompose submit several jobs before reading any answer: every one of them
    the runtime refused as a chat is asked again, not only the first."""
    client = ServiceClient("http://mm.test")
    jobs = base_model_service(monkeypatch, client, "Answer: 1")
    tags = {"experiment": "e", "task_id": "t", "strategy": "sample-select", "branch": 0}
    batch = [client.submit("base", [{"role": "user", "content": f"q{n}"}], tags) for n in range(3)]
    answers = [client.answer(job_id) for job_id in batch]
    assert [a.error for a in answers] == [None, None, None] and all(a.text == "Answer: 1" for a in answers)
    assert [jobs[a.job_id]["kind"] for a in answers] == ["generate"] * 3


def test_cancelling_a_runs_jobs_gives_up_on_a_service_that_hangs():
    """An interrupted run cancels its unanswered jobs, but a service that takes connections and
    never answers holds it at most `within_s`, not the 90 s of a poll per job."""
    import socket
    import time

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)                        # connections are taken, never answered
    try:
        client = ServiceClient(f"http://127.0.0.1:{hung.getsockname()[1]}")
        client._asked.update({f"job{i}": (True, ("m", [], {}, None)) for i in range(5)})
        started = time.monotonic()
        assert client.cancel_unanswered(within_s=1.0) == 0
        assert time.monotonic() - started < 3.0 and client._asked == {}
    finally:
        hung.close()
