"""The suite fuzzes itself: generated JSON thrown at every route that takes a body (hypothesis),
valid requests with one field replaced by anything JSON can say (NaN, Infinity, integers of
any length, wrong types, deep nesting). Every answer is a 2xx or a 4xx in valid JSON, never a
500 or a hang, and afterwards an ordinary job is still served (no stuck queue)."""
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODEL = "qwen2.5:0.5b"

VALID: dict[str, dict[str, Any]] = {
    "/api/submit": {"model": MODEL, "prompt": "hi", "options": {"num_predict": 4}, "metadata": {"k": "v"}},
    "/api/generate": {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 4}},
    "/api/chat": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False,
                  "options": {"num_predict": 4}},
    "/api/embed": {"model": "all-minilm", "input": ["a", "b"], "truncate": True},
    "/api/embeddings": {"model": "all-minilm", "prompt": "a"},
    "/api/show": {"model": MODEL},
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/v1/completions": {"model": MODEL, "prompt": "hi", "max_tokens": 4},
    "/v1/embeddings": {"model": "all-minilm", "input": "a"},
    "/api/tasks": {"tasks": [{"task_id": "fuzz/1", "suite": "fuzz", "prompt": "2+2?",
                              "check": {"kind": "exact", "answer": "4"}}]},
    "/api/experiments/fuzz/results": {"task_id": "fuzz/1", "strategy": "large", "solved": True, "attempts": 1,
                                      "job_ids": ["nope"]},
    "/api/admin/nodes": {"url": "http://127.0.0.1:9"},
}

# anything JSON (as Python's json writes it) can carry, the hostile parts included
scalars = (st.none() | st.booleans() | st.text(max_size=20)
           | st.integers(min_value=-(10**30), max_value=10**30)
           | st.floats(allow_nan=True, allow_infinity=True))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
deep = st.integers(min_value=50, max_value=3000).map(lambda n: "[" * n + "]" * n)


@pytest.fixture(scope="module")
def api(module_service):
    _, client = module_service(SIM_TOKENS_PER_S=50_000.0, SIM_NODES=1)
    return client


def assert_sound(response, path):
    assert response.status_code < 500, (path, response.status_code, response.get_data()[:300])
    if response.status_code >= 400:
        body = json.loads(response.get_data())            # valid JSON: no bare NaN
        assert body.get("error"), (path, body)


def send(api, path, raw: str):
    response = api.post(path, data=raw, content_type="application/json")
    assert_sound(response, path)
    return response


@pytest.mark.parametrize("path", sorted(VALID))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_one_field_replaced_by_anything_gets_a_json_answer_never_a_500(api, path, data):
    body = json.loads(json.dumps(VALID[path]))
    target = body
    # a field at the top, or one level down (options, messages[0], tasks[0].check)
    while True:
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        key = data.draw(st.sampled_from(keys))
        inner = target[key]
        if isinstance(inner, (dict, list)) and inner and data.draw(st.booleans()):
            target = inner
            continue
        break
    target[key] = data.draw(values)
    send(api, path, json.dumps(body))


@pytest.mark.parametrize("path", sorted(VALID))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=values, nesting=deep)
def test_any_json_at_all_gets_a_json_answer_never_a_500(api, path, body, nesting):
    send(api, path, json.dumps(body))
    send(api, path, nesting)
    send(api, path, json.dumps({**VALID[path], "metadata": json.loads("[" * 100 + "]" * 100)}))


def test_after_the_fuzzing_an_ordinary_job_is_still_served(api):
    r = api.post("/api/submit?wait=30", json={"model": MODEL, "prompt": "still there?", "options": {"num_predict": 4}})
    assert r.status_code == 200 and r.get_json()["status"] == "complete", r.get_json()
    for path in ("/api/jobs?limit=1000", "/api/dashboard", "/api/stats", "/metrics"):
        assert api.get(path).status_code == 200, path
