"""What models need: the catalog's estimate (weights and KV cache), the runtime's list and
architectures, measurements kept across restarts under the settings they were made with, and
out-of-memory learning that converges."""
import pytest

from model_registry import DESIGN_CATALOG, ModelEntry, ModelRegistry, canonical_name
from scheduling.model_memory import ModelArch, arch_from_model_info, grown_need, kv_cache_bytes
from scheduling.model_settings import ModelSettings

GB = 10**9
MIB = 1024 ** 2
PHI3 = next(s for s in DESIGN_CATALOG if s.name == "phi3:mini")


def entry(registry: ModelRegistry, name: str) -> ModelEntry:
    """The registry's entry for a model the test knows it holds."""
    found = registry.get(name)
    assert found is not None, f"{name} is not in the registry"
    return found


def test_kv_cache_is_estimated_the_way_ollama_does():
    # llama3.1:8b: 32 layers, 8 KV heads of 128 dims: 2 x 32 x 8 x 128 x 2 bytes = 128 KiB per token.
    llama = ModelArch(block_count=32, head_count=32, head_count_kv=8, embedding_length=4096, context_length=131072)
    assert kv_cache_bytes(llama, 4096, 1) == 512 * MIB
    assert kv_cache_bytes(llama, 4096, 4) == 4 * 512 * MIB                 # every slot has its own context
    # gemma states its head size (256), which is not embedding / heads (2048 / 8).
    gemma = ModelArch(18, 8, 1, 2048, 8192, key_length=256)
    assert kv_cache_bytes(gemma, 2048, 1) == 2 * 18 * 1 * 256 * 2048 * 2
    # The context is capped at the trained one, as Ollama caps it.
    phi3 = PHI3.arch
    assert kv_cache_bytes(phi3, 32768, 1) == kv_cache_bytes(phi3, 4096, 1)


def test_catalog_estimate_is_weights_times_multiplier_plus_kv_for_the_models_slots():
    registry = ModelRegistry(1.3, settings=ModelSettings(num_ctx=4096, num_parallel=2))
    kv = kv_cache_bytes(PHI3.arch, 4096, 2)
    assert kv == 2 * 2 * 32 * 32 * 96 * 4096 * 2            # phi3: no grouped KV heads, 3 GB for two slots
    assert registry.need_bytes("phi3:mini") == int(2.2 * GB * 1.3) + kv
    assert registry.slots("phi3:mini") == 2
    assert registry.slots("all-minilm:latest") == 1          # embedding models get one slot, as in Ollama
    more_context = ModelRegistry(1.3, settings=ModelSettings(num_ctx=4096, num_parallel=2,
                                                             ctx_overrides={"phi3:mini": 1024}))
    assert more_context.need_bytes("phi3:mini") == int(2.2 * GB * 1.3) + kv // 4


def test_measurements_replace_the_estimate_and_survive_restarts_under_the_same_settings(store):
    registry = ModelRegistry(1.3, store)
    registry.learn("phi3:mini", int(2.5 * GB))
    assert registry.need_bytes("phi3:mini") == int(2.5 * GB)
    again = ModelRegistry(1.3, store)              # a restart: the measurement is still there
    assert again.need_bytes("phi3:mini") == int(2.5 * GB)
    # Measured with one slot of 4096 tokens: with four slots it is stale, and the estimate is back.
    four_slots = ModelRegistry(1.3, store, settings=ModelSettings(num_parallel=4))
    assert four_slots.need_bytes("phi3:mini") == int(2.2 * GB * 1.3) + kv_cache_bytes(PHI3.arch, 4096, 4)


def test_out_of_memory_grows_the_need_once_per_incident_and_never_past_the_capacity(store):
    registry = ModelRegistry(1.3, store)
    before = registry.need_bytes("phi3:mini")
    capacity = 10 * GB
    grown = registry.learn_oom("phi3:mini", 1, capacity, 1.25)
    assert grown == int(before * 1.25)
    # Twenty jobs answered out of memory by the same load: one growth, not twenty.
    for _ in range(20):
        assert registry.learn_oom("phi3:mini", 1, capacity, 1.25) == grown
    # What that load reported while it ran teaches nothing now.
    registry.learn("phi3:mini", int(2.0 * GB), incarnation=1)
    assert registry.need_bytes("phi3:mini") == grown
    # Incident after incident, it stops at the capacity: the model still fits alone.
    for incarnation in range(2, 40):
        registry.learn_oom("phi3:mini", incarnation, capacity, 1.25)
    assert registry.need_bytes("phi3:mini") == capacity
    assert ModelRegistry(1.3, store).need_bytes("phi3:mini") == capacity     # kept, like a measurement
    # The next successful load measures it: the measured figure replaces the grown one.
    registry.learn("phi3:mini", int(3.1 * GB), incarnation=40)
    assert registry.need_bytes("phi3:mini") == int(3.1 * GB)
    assert grown_need(100, 110, 1.25) == 110 and grown_need(100, 0, 1.25) == 125


def test_architecture_from_ollamas_show_answer():
    info = {"general.architecture": "qwen2", "qwen2.block_count": 24, "qwen2.attention.head_count": 14,
            "qwen2.attention.head_count_kv": 2, "qwen2.embedding_length": 896, "qwen2.context_length": 32768}
    arch = arch_from_model_info(info)
    assert arch == ModelArch(24, 14, 2, 896, 32768)
    assert arch_from_model_info({"general.architecture": "bert"}) is None      # not enough to size a cache
    per_layer = arch_from_model_info({"general.architecture": "x", "x.block_count": 2, "x.attention.head_count": [4, 4],
                                      "x.attention.head_count_kv": [1, 2], "x.embedding_length": 64})
    assert per_layer is not None and per_layer.head_count_kv == 2
    registry = ModelRegistry(1.3)
    registry.update_from_runtime([{"name": "qwen2.5:7b", "size": 4_700_000_000, "details": {"family": "qwen2"}}])
    unknown = registry.need_bytes("qwen2.5:7b")                 # no architecture yet: a cautious guess
    assert registry.learn_architecture("qwen2.5:7b", info)
    assert registry.need_bytes("qwen2.5:7b") == int(4.7 * GB * 1.3) + kv_cache_bytes(arch, 4096, 1)
    assert registry.need_bytes("qwen2.5:7b") < unknown


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
    assert entry(registry, "llama3.1:8b").on_runtime is True
    assert entry(registry, "phi3:mini").spec.size_bytes == 2_300_000_000
    assert entry(registry, "phi3:mini").spec.arch == PHI3.arch          # the catalog's architecture is kept
    assert entry(registry, "gemma:2b").on_runtime is False
    assert entry(registry, "mxbai-embed-large:latest").spec.capabilities == ("embedding",)
    copy = ModelRegistry.from_description(registry.describe(), 1.3)
    assert copy.need_bytes("llama3.1:8b") == registry.need_bytes("llama3.1:8b")
    assert entry(copy, "gemma:2b").on_runtime is False


@pytest.mark.parametrize("name, slots", [("qwen2.5:0.5b", 3), ("all-minilm", 1)])
def test_describe_says_context_slots_and_kv(name, slots):
    registry = ModelRegistry(1.3, settings=ModelSettings(num_ctx=2048, num_parallel=3))
    row = next(r for r in registry.describe() if r["name"] == canonical_name(name))
    assert row["slots"] == slots and row["num_ctx"] == 2048 and row["arch_known"]
    assert row["need_bytes"] == row["estimated_bytes"] == int(row["size"] * 1.3) + row["kv_cache_bytes"]
