"""Ollama's and OpenAI's APIs on the manager (against the GPU simulator through the app): shapes,
streaming, errors in each API's shape, and that each request is a job in the same queue."""
import json

import pytest

from helpers import wait_until


@pytest.fixture(scope="module")
def api(module_service):
    service, client = module_service(SIM_VRAM_GB=3.5)
    return service, client


def post(client, path, body, **kw):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


def ndjson(response):
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines() if line.strip()]


def sse(response):
    events = [line[len("data: "):] for line in response.get_data(as_text=True).split("\n\n") if line.strip()]
    assert events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def test_generate_whole_answer_is_a_job_with_ollamas_figures(api):
    service, client = api
    r = post(client, "/api/generate", {"model": "qwen2.5:0.5b", "prompt": "hello", "stream": False},
             headers={"X-Priority": "high", "X-Job-Metadata": json.dumps({"experiment": "fd"})})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["done"] is True and body["done_reason"] in ("stop", "length") and body["response"].strip()
    assert body["model"] == "qwen2.5:0.5b" and body["eval_count"] == 16 and body["prompt_eval_count"] >= 1
    assert body["total_duration"] >= body["eval_duration"] > 0
    job = client.get(f"/api/job/{r.headers['X-Job-Id']}").get_json()
    assert job["status"] == "complete" and job["priority"] == "high" and job["metadata"] == {"experiment": "fd"}
    assert job["result"]["response"] == body["response"]


def test_generate_streams_ndjson_that_adds_up_to_the_answer(api):
    _, client = api
    r = post(client, "/api/generate", {"model": "qwen2.5:0.5b", "prompt": "stream me"})
    assert r.status_code == 200 and r.mimetype == "application/x-ndjson"
    chunks = ndjson(r)
    assert [c["done"] for c in chunks].count(True) == 1 and chunks[-1]["done"] is True
    assert len(chunks) >= 2
    text = "".join(c["response"] for c in chunks)
    job = client.get(f"/api/job/{r.headers['X-Job-Id']}").get_json()
    assert text == job["result"]["response"] and chunks[-1]["eval_count"] == 16


def test_chat_streams_and_embed_answers(api):
    _, client = api
    r = post(client, "/api/chat", {"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "hi"}]})
    chunks = ndjson(r)
    assert chunks[-1]["done"] and all(c["message"]["role"] == "assistant" for c in chunks)
    assert "".join(c["message"]["content"] for c in chunks).strip()
    r = post(client, "/api/embed", {"model": "all-minilm", "input": ["a", "b"]})
    assert r.status_code == 200 and len(r.get_json()["embeddings"]) == 2
    r = post(client, "/api/embeddings", {"model": "all-minilm", "prompt": "a"})
    assert r.status_code == 200 and isinstance(r.get_json()["embedding"][0], float)


def test_load_requests_are_answered_without_a_job(api):
    service, client = api
    before = service.counts().by_status
    r = post(client, "/api/generate", {"model": "qwen2.5:0.5b"})
    assert r.status_code == 200 and r.get_json()["done_reason"] == "load"
    r = post(client, "/api/chat", {"model": "qwen2.5:0.5b", "messages": [], "keep_alive": 0})
    assert r.get_json()["done_reason"] == "unload"
    assert service.counts().by_status == before
    # a load is checked as a job is: options of the wrong type or range, or names no store can keep
    for options in ({"temperature": "hot"}, {"num_predict": 10 ** 6}, {"": {"$x": 1}}):
        r = post(client, "/api/generate", {"model": "qwen2.5:0.5b", "options": options})
        assert r.status_code == 400 and r.get_json()["field"].startswith(("temperature", "num_predict", "options")), r.data


def test_models_running_models_show_and_version_are_the_runtimes(api):
    _, client = api
    names = [m["name"] for m in client.get("/api/tags").get_json()["models"]]
    assert "qwen2.5:0.5b" in names
    assert "models" in client.get("/api/ps").get_json()
    assert client.get("/api/version").get_json()["version"]
    assert "capabilities" in post(client, "/api/show", {"model": "qwen2.5:0.5b"}).get_json()


@pytest.mark.parametrize("path, body, status, word", [
    ("/api/generate", {"prompt": "x"}, 400, "model"),
    ("/api/generate", {"model": "no-such-model", "prompt": "x"}, 404, "not found"),
    ("/api/generate", {"model": "qwen2.5:0.5b", "prompt": 3}, 400, "prompt"),
    ("/api/generate", {"model": "qwen2.5:0.5b", "prompt": "x", "options": {"num_ctx": 1_000_000}}, 400, "num_ctx"),
    ("/api/chat", {"model": "qwen2.5:0.5b", "messages": [{"role": "king", "content": "x"}]}, 400, "role"),
    ("/api/embed", {"model": "qwen2.5:0.5b"}, 400, "input"),
    ("/api/embed", {"model": "qwen2.5:0.5b", "input": "x"}, 400, "embed"),
    ("/api/generate", {"model": "phi3:mini", "prompt": "x"}, 422, "GB"),
])
def test_ollama_errors_come_in_ollamas_shape(api, path, body, status, word):
    _, client = api
    r = post(client, path, body)
    assert r.status_code == status, r.get_json()
    assert isinstance(r.get_json()["error"], str) and word in r.get_json()["error"]


def test_bad_priority_and_metadata_headers_are_400(api):
    _, client = api
    body = {"model": "qwen2.5:0.5b", "prompt": "x", "stream": False}
    assert post(client, "/api/generate", body, headers={"X-Priority": "urgent"}).status_code == 400
    assert post(client, "/api/generate", body, headers={"X-Job-Metadata": "[1]"}).status_code == 400
    assert post(client, "/api/generate", body, headers={"X-Job-Metadata": '{"$x": 1}'}).status_code == 400


def test_runner_options_a_client_sends_out_of_habit_are_dropped(api):
    _, client = api
    r = post(client, "/api/generate", {"model": "qwen2.5:0.5b", "prompt": "x", "stream": False,
                                       "options": {"num_ctx": 512, "num_batch": 64, "temperature": 0}})
    assert r.status_code == 200
    job = client.get(f"/api/job/{r.headers['X-Job-Id']}?include=request").get_json()
    assert job["options"] == {"temperature": 0}


def test_openai_chat_whole_and_streamed(api):
    _, client = api
    body = {"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    r = post(client, "/v1/chat/completions", body)
    assert r.status_code == 200, r.get_json()
    answer = r.get_json()
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["choices"][0]["message"]["content"].strip() and answer["choices"][0]["finish_reason"] in ("stop", "length")
    assert answer["usage"]["completion_tokens"] == 16
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + 16
    r = post(client, "/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.mimetype == "text/event-stream"
    chunks = sse(r)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == client.get(f"/api/job/{r.headers['X-Job-Id']}").get_json()["result"]["message"]["content"]


def test_openai_completions_embeddings_and_models(api):
    _, client = api
    r = post(client, "/v1/completions", {"model": "qwen2.5:0.5b", "prompt": "once", "max_tokens": 5})
    assert r.status_code == 200 and r.get_json()["object"] == "text_completion"
    job = client.get(f"/api/job/{r.headers['X-Job-Id']}?include=request").get_json()
    assert job["options"]["num_predict"] == 5 and job["options"]["temperature"] == 1.0
    chunks = sse(post(client, "/v1/completions", {"model": "qwen2.5:0.5b", "prompt": "once", "stream": True}))
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    r = post(client, "/v1/embeddings", {"model": "all-minilm", "input": ["a", "b"]})
    data = r.get_json()["data"]
    assert [d["index"] for d in data] == [0, 1] and isinstance(data[0]["embedding"][0], float)
    r = post(client, "/v1/embeddings", {"model": "all-minilm", "input": "a", "encoding_format": "base64"})
    assert isinstance(r.get_json()["data"][0]["embedding"], str)
    ids = [m["id"] for m in client.get("/v1/models").get_json()["data"]]
    assert "qwen2.5:0.5b" in ids
    assert client.get("/v1/models/qwen2.5:0.5b").get_json()["id"] == "qwen2.5:0.5b"
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.get_json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("body, status", [
    ({"messages": [{"role": "user", "content": "x"}]}, 400),
    ({"model": "qwen2.5:0.5b", "messages": []}, 400),
    ({"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400),
    ({"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400),
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404),
])
def test_openai_errors_come_in_openais_shape(api, body, status):
    _, client = api
    r = post(client, "/v1/chat/completions", body)
    assert r.status_code == status, r.get_json()
    error = r.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


@pytest.mark.slow
def test_a_client_that_goes_away_cancels_its_job(main_process):
    """Under `python main.py` (waitress): a stream closed mid-answer, and a whole-answer request
    given up while its job waits, each cancel their job and free the slot."""
    import requests

    proc = main_process(("--backend", "sim"), SIM_TOKENS_PER_S=5, SIM_DEFAULT_TOKENS=100, SIM_NUM_PARALLEL=1)
    url = proc.url

    def jobs_tagged(tag):
        listed = requests.get(url + "/api/jobs", timeout=5).json()["jobs"]
        return [j for j in listed if j["metadata"].get("tag") == tag]

    with requests.post(url + "/api/generate", json={"model": "qwen2.5:0.5b", "prompt": "long"}, stream=True,
                       timeout=30) as r:
        job_id = r.headers["X-Job-Id"]
        next(r.iter_lines())                      # the answer has started
    wait_until(lambda: requests.get(f"{url}/api/job/{job_id}", timeout=5).json()["status"] == "cancelled",
               timeout=5, message="the streamed job cancelled")

    blocker = requests.post(url + "/api/submit", json={"model": "qwen2.5:0.5b", "prompt": "blocker"},
                            timeout=5).json()["job_id"]
    with pytest.raises(requests.ReadTimeout):
        requests.post(url + "/api/generate", json={"model": "qwen2.5:0.5b", "prompt": "given up", "stream": False},
                      headers={"X-Job-Metadata": json.dumps({"tag": "given-up"})}, timeout=1.5)
    wait_until(lambda: [j["status"] for j in jobs_tagged("given-up")] == ["cancelled"], timeout=5,
               message="the waiting job cancelled")
    assert requests.get(f"{url}/api/job/{blocker}", timeout=5).json()["status"] == "running"


def test_relayed_pieces_sent_twice_after_a_failed_write_are_delivered_once():
    from jobs.model import JobDoc
    from service.answers import End, Piece, follow
    batches = [("r1", [{"text": "a", "i": 0}, {"text": "b", "i": 1}]),
               ("r1", [{"text": "a", "i": 0}, {"text": "b", "i": 1}, {"text": "c", "i": 2}])]
    done = JobDoc(job_id="j", status="complete")
    events = list(follow("j", None, lambda _: done, lambda _, skip: batches[skip:], lambda: False))
    assert [e.piece["text"] for e in events if isinstance(e, Piece)] == ["a", "b", "c"]
    assert isinstance(events[-1], End) and isinstance(events[0], Piece) and "i" not in events[0].piece


def test_the_end_of_a_stream_sends_exactly_what_it_missed():
    from front_door.delivery import Delivery
    from jobs.model import JobKind
    delivery = Delivery()
    call = {"function": {"name": "f", "arguments": {}}}
    delivery.accept("r1", {"text": "Hel", "tool_calls": [call]})
    assert delivery.accept("r2", {"text": "other run"}) is None
    result = {"message": {"content": "Hello", "tool_calls": [call, call]}}
    assert delivery.rest(JobKind.CHAT, result) == {"text": "lo", "tool_calls": [call]}
    assert delivery.rest(JobKind.CHAT, {"message": {"content": "Goodbye"}}) is None


def test_odd_but_valid_messages_and_malformed_ones(api):
    _, client = api
    r = post(client, "/api/chat", {"model": "qwen2.5:0.5b", "stream": False, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": None}, {"role": "user", "content": "go"}]})
    assert r.status_code == 200, r.get_json()
    for bad in ("x", [None], [{"function": 5}]):
        r = post(client, "/v1/chat/completions", {"model": "qwen2.5:0.5b", "messages": [
            {"role": "assistant", "content": "", "tool_calls": bad}]})
        assert r.status_code == 400, (bad, r.get_json())
