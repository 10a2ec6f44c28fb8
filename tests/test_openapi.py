"""The OpenAPI document at /api/openapi.json: it lists every route the app registers, follows the
configuration, and schemathesis (every check, every phase) finds no mismatch and no 5xx in a run
of well over 500 requests against a live service on the GPU simulator."""
from __future__ import annotations

import collections
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import events, from_schema
from waitress.server import create_server

from helpers import make_config
from routes.common import encode_cursor
from routes.openapi import build_spec
from tenancy.keys import ApiKey, key_hash, new_key

SPEC = "/api/openapi.json"
MIN_REQUESTS = 500
# Opaque values the API hands out, so "schema-valid" ones must be real: a page's next_cursor, and a
# tool call's arguments as OpenAI sends them (a JSON object as text).
schemathesis.openapi.format("page-cursor", st.builds(encode_cursor, st.floats(0, 2e9), st.text(max_size=40)))
schemathesis.openapi.format("json-object", st.dictionaries(st.from_regex(r"\A([^$.\x00][^.\x00]{0,7})?\Z"),
                                                           st.integers(-2**63, 2**63 - 1) | st.text(max_size=8),
                                                           max_size=3).map(json.dumps))


def documented_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item}


def served_operations(app) -> set[tuple[str, str]]:
    """(METHOD, path) for every rule, `<path:name>` written `{name}` as in OpenAPI."""
    out = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        out |= {(method, path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return out


@pytest.fixture
def app(tmp_path):
    from api import create_app
    from service.facade import Service
    config = make_config(tmp_path)
    return create_app(config, Service(config))


def test_every_route_the_app_serves_is_documented_and_nothing_else(app):
    spec = app.test_client().get(SPEC).get_json()
    served, documented = served_operations(app), documented_operations(spec)
    assert served - documented == set(), "routes missing from the OpenAPI document (openapi_*.py)"
    assert documented - served == set(), "documented operations the app does not serve"


def test_every_operation_documents_its_errors_and_the_key_it_needs(app):
    spec = app.test_client().get(SPEC).get_json()
    assert spec["openapi"].startswith("3.1")
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            assert codes & {"200", "201", "202"}, (method, path)
            if operation.get("security") != []:
                assert "401" in codes, f"{method} {path} needs a key where AUTH_REQUIRED but documents no 401"
            if "requestBody" in operation and path.startswith(("/api/", "/v1/")):
                assert "400" in codes and "413" in codes, (method, path)


def test_the_document_follows_the_configuration(tmp_path):
    from api import create_app
    from service.facade import Service
    open_config = make_config(tmp_path / "a", MAX_JOB_TIMEOUT_S=90.0)
    keyed_config = make_config(tmp_path / "b", AUTH_REQUIRED=True, NUM_CTX=2048, MODEL_NUM_CTX="big:1b=8192")
    open_spec = create_app(open_config, Service(open_config)).test_client().get(SPEC).get_json()
    assert {} in open_spec["security"]                              # a key is optional without AUTH_REQUIRED
    generate_job = open_spec["components"]["schemas"]["SubmitRequest"]["anyOf"][0]
    assert generate_job["properties"]["timeout_s"]["anyOf"][0]["maximum"] == 90.0
    keyed = create_app(keyed_config, Service(keyed_config)).test_client()
    assert keyed.get(SPEC).status_code == 401                       # like every route but the probes
    keyed_spec = build_spec(keyed_config)
    assert {} not in keyed_spec["security"]
    assert keyed_spec["paths"]["/api/health"]["get"]["security"] == []
    chat = keyed_spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert chat["schema"]["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 8192


@contextmanager
def served_over_http(app) -> Iterator[tuple[str, collections.Counter, list[str]]]:
    """The app on a real port (waitress, as `python main.py` serves it), counting the requests it
    answers by status and noting every 5xx."""
    counts: collections.Counter = collections.Counter()
    server_errors: list[str] = []
    inner = app.wsgi_app

    def counting(environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)

        def record(status, headers, exc_info=None):
            counts["requests"] += 1
            counts[status[:3]] += 1
            if status.startswith("5"):
                server_errors.append(f"{status} {environ['REQUEST_METHOD']} {environ['PATH_INFO']} {body[:300]!r}")
            return start_response(status, headers, exc_info)
        return inner(environ, record)

    app.wsgi_app = counting
    server = create_server(app, host="127.0.0.1", port=0, threads=16)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}", counts, server_errors
    finally:
        server.close()
        app.wsgi_app = inner


def _error_text(response) -> str:
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        return ""
    return str(error.get("message") if isinstance(error, dict) else error)


def accepted_by_design(failure, response) -> str | None:
    """Why a "schema-valid request rejected" finding is the API's documented behaviour that a
    schema cannot express, or None. Only these three; every other finding fails the test."""
    if type(failure).__name__ != "RejectedPositiveData":
        return None
    text = _error_text(response)
    if response.status_code == 400 and "cannot serve kind" in text:
        return "a model that cannot serve the request's kind (schemathesis reuses names it saw answered)"
    if response.status_code == 422 and "Idempotency-Key" in text:
        return "an Idempotency-Key reused with another body"
    if response.status_code == 400 and "every job is an attempt" in text:
        return "a result with fewer attempts than the jobs it lists"
    return None


def test_schemathesis_finds_no_mismatch_and_no_server_error(running_service):
    # A tenant's key (not an admin's): every route needs one, and the admin routes answer 403 rather
    # than adding made-up runtime nodes to the live scheduler (or removing the simulator).
    service, client = running_service(AUTH_REQUIRED=True, SIM_TOKENS_PER_S=50_000.0, SIM_NUM_PARALLEL=4,
                                      JOB_TIMEOUT_S=20.0)
    key_id, key = new_key()
    service.raw_store.put_key(ApiKey(key_id, "schemathesis", created_at=time.time()).record(key_hash(key)))
    config = schemathesis.Config.from_dict({
        "seed": int(os.environ.get("SCHEMATHESIS_SEED", "20261125")),
        "generation": {"max-examples": int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10")), "database": "none"},
        "checks": {"enabled": True},                                 # all of them
        "auth": {"openapi": {"bearerAuth": {"bearer": key}}},
    })
    findings: list[str] = []
    accepted: collections.Counter = collections.Counter()
    with served_over_http(client.application) as (url, counts, server_errors):
        schema = schemathesis.openapi.from_url(url + SPEC, config=config, headers={"Authorization": f"Bearer {key}"})

        @schema.hook
        def filter_failure(context, failure, case, response) -> bool:
            reason = accepted_by_design(failure, response)
            if reason:
                accepted[reason] += 1
            return reason is None

        started = time.monotonic()
        for event in from_schema(schema).execute():
            if isinstance(event, events.NonFatalError | events.FatalError):
                findings.append(f"{getattr(event, 'label', 'engine')}: {getattr(event, 'value', None) or event}")
            recorder = getattr(event, "recorder", None)
            if recorder is not None:
                for case_id, checks in recorder.checks.items():
                    for check in checks:
                        if check.failure_info is not None:
                            answer = recorder.interactions.get(case_id)
                            answer = answer.response if answer is not None else None
                            findings.append(f"{recorder.label}: {check.failure_info.failure.title}\n"
                                            f"{check.failure_info.failure.message[:400]}\n"
                                            f"{check.failure_info.code_sample[:600]}\n=> "
                                            f"{answer.status_code if answer else ''} "
                                            f"{answer.content[:300] if answer else ''!r}")
            if isinstance(event, events.EngineFinished):
                findings += [f"after the run: {f.title}: {f.message[:400]}" for f in event.failures]
        elapsed = time.monotonic() - started
    print(f"schemathesis: {counts['requests']} requests in {elapsed:.1f} s, by status "
          f"{ {k: v for k, v in sorted(counts.items()) if k != 'requests'} }; accepted by design: {dict(accepted)}")
    assert server_errors == [], "5xx answers:\n" + "\n".join(server_errors[:10])
    assert findings == [], f"{len(findings)} findings, the first ones:\n\n" + "\n\n".join(dict.fromkeys(findings))
    assert counts["requests"] >= MIN_REQUESTS
