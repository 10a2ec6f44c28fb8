"""What schemathesis found against the OpenAPI document, pinned down one by one: bad input gets a
4xx that says why, never a 500 or a guess."""
import json

import pytest


@pytest.fixture(scope="module")
def api(module_service):
    _, client = module_service(SIM_NODES=2, SIM_TOKENS_PER_S=50_000.0)
    return client


def post(client, path, body, **kw):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


def test_a_method_a_route_does_not_take_gets_405_with_allow(api):
    r = api.put("/api/submit")
    assert r.status_code == 405 and r.get_json()["error"]
    assert set(r.headers["Allow"].replace(" ", "").split(",")) >= {"POST"}


@pytest.mark.parametrize("path, body, field", [
    ("/api/generate", {"model": "qwen2.5:0.5b", "prompt": "hi", "stream": "false"}, "stream"),
    ("/api/generate", {"model": "qwen2.5:0.5b", "prompt": "hi", "cache": 0}, "cache"),
    ("/api/embed", {"model": "all-minilm", "input": "a", "dimensions": "8"}, "dimensions"),
    ("/v1/completions", {"model": "qwen2.5:0.5b", "prompt": "hi", "max_tokens": "8"}, "max_tokens"),
])
def test_front_doors_take_json_types_as_they_are(api, path, body, field):
    r = post(api, path, body)
    assert r.status_code == 400, r.get_data()
    error = r.get_json()["error"]
    assert (error["param"] if path.startswith("/v1/") else r.get_json()["field"]) == field


def test_a_whole_number_written_with_a_point_is_an_integer(api):
    r = post(api, "/v1/completions", {"model": "qwen2.5:0.5b", "prompt": "hi", "max_tokens": 4.0, "n": 1.0})
    assert r.status_code == 200 and r.get_json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": "qwen2.5:0.5b", "prompt": "hi", "max_tokens": 10**12}),
    ("/api/generate", {"model": "qwen2.5:0.5b", "prompt": "hi", "stream": False, "options": {"num_predict": 5000}}),
])
def test_an_answer_longer_than_the_models_context_is_refused_before_it_could_only_time_out(api, path, body):
    r = post(api, path, body)
    assert r.status_code == 400 and "context of 4096 tokens" in r.get_data(as_text=True)


def test_options_the_runtime_refuses_get_400_with_its_reason_not_500(api):
    r = post(api, "/api/generate", {"model": "qwen2.5:0.5b", "prompt": "hi", "stream": False,
                                    "options": {"num_predict": "many"}})
    assert r.status_code == 400 and "num_predict must be an integer" in r.get_json()["error"]


@pytest.mark.parametrize("message", [
    {"role": "assistant", "content": "", "tool_calls": {}},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": [1, 2]}}]},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "5"}}]},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": 7}}]},
    {"role": "user", "content": [{"type": "text", "text": 5}]},
])
def test_malformed_openai_messages_get_400(api, message):
    r = post(api, "/v1/chat/completions", {"model": "qwen2.5:0.5b", "messages": [message]})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "messages", r.get_data()


def test_a_tool_call_with_json_text_arguments_is_taken(api):
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    r = post(api, "/v1/chat/completions", {"model": "qwen2.5:0.5b", "max_tokens": 4, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}]})
    assert r.status_code == 200


def test_a_load_request_still_checks_its_headers(api):
    r = post(api, "/api/chat", {"model": "qwen2.5:0.5b"}, headers={"X-Priority": "urgent"})
    assert r.status_code == 400 and r.get_json()["field"] == "X-Priority"
    r = post(api, "/api/chat", {"model": "qwen2.5:0.5b"}, headers={"X-Job-Metadata": '"text"'})
    assert r.status_code == 400 and r.get_json()["field"] == "X-Job-Metadata"


def test_the_runtimes_own_answers_pass_through_with_several_nodes(api):
    for path in ("/api/tags", "/api/ps", "/api/version"):
        r = api.get(path)
        assert r.status_code == 200, (path, r.get_data())
    assert api.post("/api/show", json={"model": "qwen2.5:0.5b"}).status_code == 200
