"""What models need: the catalog, the runtime's list, and measurements kept across restarts."""
from model_registry import DESIGN_CATALOG, ModelRegistry, canonical_name

GB = 10**9


def test_catalog_estimates_until_measured_and_keeps_measurements_across_restarts(store):
    registry = ModelRegistry(1.3, store)
    assert len(DESIGN_CATALOG) == 10
    assert registry.need_bytes("phi3:mini") == int(2.2 * GB * 1.3)
    registry.learn("phi3:mini", int(2.5 * GB))
    assert registry.need_bytes("phi3:mini") == int(2.5 * GB)
    again = ModelRegistry(1.3, store)              # a restart: the measurement is still there
    assert again.need_bytes("phi3:mini") == int(2.5 * GB)


def test_names_resolve_like_ollama_and_suggestions():
    registry = ModelRegistry(1.3)
    assert canonical_name("all-minilm") == "all-minilm:latest"
    assert registry.resolve("all-minilm") == "all-minilm:latest"
    assert registry.resolve("nonexistent") is None
    assert "qwen2.5:0.5b" in registry.suggestions("qwen2.5:0.6b")
    assert registry.fitting(int(0.5 * GB)) == ["nomic-embed-text:latest", "smollm:360m", "all-minilm:latest"]


def test_runtime_list_adds_models_and_marks_missing_ones():
    registry = ModelRegistry(1.3)
    registry.update_from_runtime([
        {"name": "llama3.1:8b", "size": 4_900_000_000, "details": {"family": "llama", "parameter_size": "8B"}},
        {"name": "phi3:mini", "size": 2_300_000_000, "details": {"family": "phi3"}},
        {"name": "mxbai-embed-large:latest", "size": 670_000_000, "details": {"family": "bert"}},
    ])
    assert registry.get("llama3.1:8b").on_runtime is True
    assert registry.get("phi3:mini").spec.size_bytes == 2_300_000_000
    assert registry.get("gemma:2b").on_runtime is False
    assert registry.get("mxbai-embed-large:latest").spec.capabilities == ("embedding",)
    copy = ModelRegistry.from_description(registry.describe(), 1.3)
    assert copy.need_bytes("llama3.1:8b") == registry.need_bytes("llama3.1:8b")
    assert copy.get("gemma:2b").on_runtime is False


def test_out_of_memory_grows_the_need():
    registry = ModelRegistry(1.3)
    before = registry.need_bytes("gemma:2b")
    assert registry.learn_oom("gemma:2b") > before
