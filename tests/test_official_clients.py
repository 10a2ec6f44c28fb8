"""The official `ollama` and `openai` Python clients, unchanged, against `python main.py` with
AUTH_REQUIRED=true and keys made by `python main.py keys create`, on the embedded runtime (real
inference): generation, chat and models with smollm2, embeddings with all-minilm."""
import json
import subprocess
import sys

import numpy as np
import ollama
import openai
import pytest
import requests

from helpers import ROOT, MainProcess, present, require_models

pytestmark = [pytest.mark.embedded, pytest.mark.slow]
MODEL = "smollm2:135m"
EMBEDDER = "all-minilm"


def create_key(directory, tenant, *extra) -> str:
    out = subprocess.run([sys.executable, "main.py", "keys", "create", "--tenant", tenant, *extra], cwd=ROOT,
                         env=MainProcess(directory, [], {}).env, capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def start(directory, args, **env) -> MainProcess:
    directory.mkdir(parents=True, exist_ok=True)
    return MainProcess(directory, args, {"AUTH_REQUIRED": "true", **{k: str(v) for k, v in env.items()}}).start()


@pytest.fixture(scope="module")
def manager(tmp_path_factory, model_cache):
    require_models(MODEL, EMBEDDER)
    directory = tmp_path_factory.mktemp("clients")
    keys = {"alice": create_key(directory, "alice"), "bob": create_key(directory, "bob")}
    proc = start(directory, ["--backend", "embedded"], EMBEDDED_MODEL_CACHE=model_cache)
    yield proc, keys
    proc.stop()


def test_ollama_client_generates_chats_and_lists(manager):
    proc, keys = manager
    client = ollama.Client(host=proc.url, headers={"Authorization": f"Bearer {keys['alice']}"})
    answer = client.generate(model=MODEL, prompt="The capital of France is", options={"num_predict": 8})
    assert answer.done and present(answer.response).strip() and present(answer.eval_count) > 0
    assert present(answer.total_duration) >= present(answer.eval_duration) > 0
    pieces = list(client.generate(model=MODEL, prompt="Count: one, two,", stream=True, options={"num_predict": 8}))
    assert pieces[-1].done and sum(1 for p in pieces if p.response) >= 2
    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], options={"num_predict": 8})
    assert reply.message.role == "assistant" and present(reply.message.content).strip()
    streamed = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], stream=True,
                                options={"num_predict": 8}))
    assert streamed[-1].done and "".join(present(p.message.content) for p in streamed).strip()
    assert MODEL in [m.model for m in client.list().models]
    assert MODEL in [m.model for m in client.ps().models]
    assert client.show(MODEL).modelfile is not None or client.show(MODEL).details is not None


def test_openai_client_chats_completes_and_lists(manager):
    proc, keys = manager
    client = openai.OpenAI(base_url=proc.url + "/v1", api_key=keys["alice"], max_retries=0)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8)
    assert present(chat.choices[0].message.content).strip() and present(chat.usage).completion_tokens > 0
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}],
                                            max_tokens=8, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and present(chunks[-1].usage).completion_tokens > 0
    done = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8)
    assert done.choices[0].text.strip() and present(done.usage).total_tokens > present(done.usage).completion_tokens
    assert MODEL in [m.id for m in client.models.list().data]


def test_without_a_valid_key_the_clients_get_401_and_tenants_are_apart(manager):
    proc, keys = manager
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=proc.url).list()
    assert refused.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=proc.url + "/v1", api_key="mm-wrong-key", max_retries=0).models.list()
    r = requests.post(proc.url + "/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False,
                                                        "options": {"num_predict": 4}},
                      headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=60)
    job_id = r.headers["X-Job-Id"]
    mine = requests.get(f"{proc.url}/api/job/{job_id}", headers={"X-API-Key": keys["alice"]}, timeout=5)
    theirs = requests.get(f"{proc.url}/api/job/{job_id}", headers={"X-API-Key": keys["bob"]}, timeout=5)
    assert mine.status_code == 200 and theirs.status_code == 404


def test_clients_embed_through_the_manager(manager):
    proc, keys = manager
    reference = json.loads((ROOT / "tests" / "data" / "minilm_reference.json").read_text())
    texts, expected = reference["inputs"][:2], np.array(reference["vectors"][:2])
    client = ollama.Client(host=proc.url, headers={"Authorization": f"Bearer {keys['alice']}"})
    vectors = np.array(client.embed(model=EMBEDDER, input=texts).embeddings)
    assert vectors.shape == (2, 384) and np.min(np.sum(vectors * expected, axis=1)) >= 0.9999
    legacy = np.array(client.embeddings(model=EMBEDDER, prompt=texts[0]).embedding)
    assert float(legacy @ expected[0]) / float(np.linalg.norm(legacy)) >= 0.9999
    data = openai.OpenAI(base_url=proc.url + "/v1", api_key=keys["alice"], max_retries=0).embeddings.create(
        model=EMBEDDER, input=texts).data
    assert np.min(np.sum(np.array([d.embedding for d in data]) * expected, axis=1)) >= 0.9999
