"""all-minilm on the embedded runtime: the numpy encoder's vectors against sentence-transformers'
(tests/data/minilm_reference.json, made by tests/data/make_minilm_reference.py by hand), batches
against one input at a time, truncation, and Ollama's and OpenAI's embedding routes straight on
the runtime and through the manager's queue."""
import base64
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from embedded_runtime.catalog import CATALOG, EmbeddedModel, ModelFiles, ModelUnavailable, sha256_of
from helpers import MainProcess, require_models
from runtime.launcher import ManagedRuntime

pytestmark = pytest.mark.embedded
MODEL = "all-minilm"
REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())
LONG = REFERENCE["inputs"][-1]          # past 512 tokens: the reference was cut there


def cosines(vectors, expected) -> list[float]:
    return [float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(vectors, expected, strict=True)]


@pytest.fixture(scope="module")
def encoder(model_cache):
    require_models(MODEL)
    from embedded_runtime.bert import BertEncoder
    return BertEncoder(ModelFiles(model_cache).path(CATALOG[MODEL]))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory, model_cache):
    require_models(MODEL, "smollm2:135m")
    logs = tmp_path_factory.mktemp("embedded-embeddings")
    proc = ManagedRuntime("embedded", "embedded_runtime", ["--cache-dir", str(model_cache), "--log-dir", str(logs)],
                          logs / "runtime.log")
    yield proc.start()
    proc.stop()


@pytest.fixture(scope="module")
def manager(tmp_path_factory, model_cache):
    require_models(MODEL)
    proc = MainProcess(tmp_path_factory.mktemp("embed-manager"), ["--backend", "embedded"],
                       {"EMBEDDED_MODEL_CACHE": str(model_cache)}).start()
    yield proc.url
    proc.stop()


def test_vectors_match_sentence_transformers_for_every_input(encoder):
    vectors, tokens = encoder.embed(REFERENCE["inputs"])
    assert all(len(v) == 384 for v in vectors)
    assert min(cosines(vectors, REFERENCE["vectors"])) >= 0.9999
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors)
    assert tokens == sum(min(len(encoder.tokenizer.encode(t).ids), 512) for t in REFERENCE["inputs"])


def test_a_batch_gives_the_vectors_of_one_input_at_a_time(encoder):
    batch, _ = encoder.embed(REFERENCE["inputs"])
    alone = [encoder.embed([text])[0][0] for text in REFERENCE["inputs"]]
    assert np.max(np.abs(np.array(batch) - np.array(alone))) < 1e-5


def test_a_long_input_is_cut_at_512_tokens_or_refused(encoder):
    from embedded_runtime.bert import TooLong
    assert len(encoder.tokenizer.encode(LONG).ids) > 512
    [cut], tokens = encoder.embed([LONG])
    assert tokens == 512
    assert cosines([cut], [REFERENCE["vectors"][-1]])[0] >= 0.9999
    with pytest.raises(TooLong, match="exceeds the context length"):
        encoder.embed([LONG], truncate=False)


def test_ollama_routes_straight_on_the_runtime(runtime):
    texts = REFERENCE["inputs"][:4]
    r = requests.post(f"{runtime}/api/embed", json={"model": MODEL, "input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL and body["prompt_eval_count"] > 0 and body["total_duration"] > 0
    assert min(cosines(body["embeddings"], REFERENCE["vectors"][:4])) >= 0.9999
    one = requests.post(f"{runtime}/api/embed", json={"model": MODEL + ":latest", "input": texts[0]}, timeout=30).json()
    assert len(one["embeddings"]) == 1 and cosines(one["embeddings"], body["embeddings"][:1])[0] > 0.99999
    legacy = requests.post(f"{runtime}/api/embeddings", json={"model": MODEL, "prompt": texts[1]}, timeout=30).json()
    assert cosines([legacy["embedding"]], [REFERENCE["vectors"][1]])[0] >= 0.9999
    short = requests.post(f"{runtime}/api/embed", json={"model": MODEL, "input": texts[0], "dimensions": 64},
                          timeout=30).json()["embeddings"][0]
    assert len(short) == 64 and abs(np.linalg.norm(short) - 1) < 1e-6
    assert np.allclose(np.array(short) / short[0], np.array(body["embeddings"][0][:64]) / body["embeddings"][0][0],
                       atol=1e-4)


def test_the_runtime_refuses_what_ollama_refuses(runtime):
    too_long = requests.post(f"{runtime}/api/embed", json={"model": MODEL, "input": [LONG], "truncate": False},
                             timeout=30)
    assert too_long.status_code == 400 and "exceeds the context length" in too_long.json()["error"]
    cut = requests.post(f"{runtime}/api/embed", json={"model": MODEL, "input": [LONG]}, timeout=30)
    assert cut.status_code == 200 and cut.json()["prompt_eval_count"] == 512
    generate = requests.post(f"{runtime}/api/generate", json={"model": MODEL, "prompt": "hi"}, timeout=30)
    assert generate.status_code == 400 and "does not support generate" in generate.json()["error"]
    chat = requests.post(f"{runtime}/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                         timeout=30)
    assert chat.status_code == 400
    text_model = requests.post(f"{runtime}/api/embed", json={"model": "smollm2:135m", "input": "x"}, timeout=30)
    assert text_model.status_code == 400 and "does not support embeddings" in text_model.json()["error"]
    bad: list[dict[str, Any]] = [{"input": 5}, {"input": ["a", 3]}, {"input": "a", "truncate": "yes"},
                                 {"input": "a", "dimensions": 0}]
    for fields in bad:
        assert requests.post(f"{runtime}/api/embed", json={"model": MODEL, **fields}, timeout=30).status_code == 400
    show = requests.post(f"{runtime}/api/show", json={"model": MODEL}, timeout=30).json()
    assert show["capabilities"] == ["embedding"] and show["model_info"]["bert.embedding_length"] == 384
    ps = {m["name"]: m for m in requests.get(f"{runtime}/api/ps", timeout=30).json()["models"]}
    assert ps[MODEL]["num_parallel"] == 1 and ps[MODEL]["size"] > 90_000_000     # measured: the runner's RSS


def test_through_the_manager_ollama_and_openai_shapes(manager):
    texts = REFERENCE["inputs"][:3]
    r = requests.post(f"{manager}/api/embed", json={"model": MODEL, "input": texts}, timeout=120)
    assert r.status_code == 200, r.text
    assert min(cosines(r.json()["embeddings"], REFERENCE["vectors"][:3])) >= 0.9999
    job = requests.get(f"{manager}/api/job/{r.headers['X-Job-Id']}", timeout=10).json()
    assert job["status"] == "complete" and job["kind"] == "embed"      # a batch of inputs is one job
    floats = requests.post(f"{manager}/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=60).json()
    coded = requests.post(f"{manager}/v1/embeddings", json={"model": MODEL, "input": texts,
                                                            "encoding_format": "base64"}, timeout=60).json()
    decoded = [list(struct.unpack(f"<{384}f", base64.b64decode(d["embedding"]))) for d in coded["data"]]
    assert min(cosines([d["embedding"] for d in floats["data"]], REFERENCE["vectors"][:3])) >= 0.9999
    assert min(cosines(decoded, REFERENCE["vectors"][:3])) >= 0.9999
    assert floats["usage"]["prompt_tokens"] > 0
    legacy = requests.post(f"{manager}/api/embeddings", json={"model": MODEL, "prompt": texts[0]}, timeout=60).json()
    assert cosines([legacy["embedding"]], REFERENCE["vectors"][:1])[0] >= 0.9999
    too_long = requests.post(f"{manager}/api/embed", json={"model": MODEL, "input": LONG, "truncate": False}, timeout=60)
    assert too_long.status_code == 400 and "context length" in too_long.json()["error"]
    generate = requests.post(f"{manager}/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False},
                             timeout=60)
    assert generate.status_code == 400


def test_the_zipped_model_is_unpacked_once_and_its_weights_checked(tmp_path, monkeypatch):
    package = tmp_path / "pkgs" / "fake_embedder"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    with zipfile.ZipFile(package / "model.zip", "w") as z:
        z.writestr("model.safetensors", b"weights")
        z.writestr("config.json", "{}")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    (tmp_path / "weights").write_bytes(b"weights")
    good = EmbeddedModel("fake-embed", ("fake",), (("fake_embedder", "model.zip"),), sha256_of(tmp_path / "weights"),
                         7, "bert", "1M", "F32", False, 512, capabilities=("embedding",),
                         archive_weights="model.safetensors", format="safetensors")
    files = ModelFiles(tmp_path / "cache")
    folder = files.path(good)
    assert (folder / "model.safetensors").read_bytes() == b"weights" and (folder / "config.json").exists()
    assert files.path(good) == folder
    (folder / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ModelUnavailable) as err:
        files.path(good)
    assert err.value.status == 500 and "SHA-256" in str(err.value) and not folder.exists()
    assert files.path(good) == folder          # unpacked again from the package, and good


def test_a_job_sent_before_the_scheduler_published_gets_the_registry_name(tmp_path):
    """Right after a start the API has no registry to resolve names with: an untagged name is
    stored as Ollama names it (`all-minilm` is `all-minilm:latest`), so that the scheduler knows
    the model (an embedding model is loaded by an embed request, not a generate)."""
    from api import create_app
    from helpers import make_config
    from service.facade import Service

    cfg = make_config(tmp_path / "svc")
    service = Service(cfg)                  # not started: no scheduler has published a registry
    try:
        client = create_app(cfg, service).test_client()
        r = client.post("/api/submit", json={"model": MODEL, "kind": "embed", "input": "x"})
        assert r.status_code == 202, r.get_json()
        assert client.get(f"/api/job/{r.get_json()['job_id']}").get_json()["model"] == "all-minilm:latest"
    finally:
        service.store.close()


def test_an_embedding_model_is_unloaded_by_a_generate_with_keep_alive_0(runtime):
    """As in Ollama (and as the manager unloads every model), before the capability check."""
    requests.post(f"{runtime}/api/embed", json={"model": MODEL, "input": []}, timeout=30).raise_for_status()
    r = requests.post(f"{runtime}/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=30)
    assert r.status_code == 200 and r.json()["done_reason"] == "unload"
    assert MODEL not in [m["name"] for m in requests.get(f"{runtime}/api/ps", timeout=5).json()["models"]]
