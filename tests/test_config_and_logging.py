"""Configuration from the environment and `.env`, and the log line format."""
import logging
import re

import pytest
from pydantic import ValidationError

from config import Config, settings_markdown
from telemetry.logs import get_logger, setup_logging


def test_defaults_environment_and_dotenv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("QUEUE_MAX_SIZE", "VRAM_SAFETY_MARGIN_MB", "MONGODB_URI", "STORE", "HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    cfg = Config()
    assert (cfg.VRAM_SAFETY_MARGIN_MB, cfg.VRAM_ESTIMATION_MULTIPLIER, cfg.OLLAMA_NUM_PARALLEL, cfg.NUM_CTX) == (
        1024, 1.3, 1, 4096)
    assert (cfg.QUEUE_MAX_SIZE, cfg.MAX_PROMPT_BYTES, cfg.SCHEDULER_LOOP_INTERVAL) == (1000, 4 * 1024 * 1024, 0.1)
    assert cfg.store_kind == "sqlite"
    (tmp_path / ".env").write_text("QUEUE_MAX_SIZE=42\nMONGODB_URI=mongodb://db:27017\n")
    monkeypatch.setenv("VRAM_SAFETY_MARGIN_MB", "512")
    cfg = Config()
    assert cfg.QUEUE_MAX_SIZE == 42 and cfg.VRAM_SAFETY_MARGIN_MB == 512
    assert cfg.store_kind == "mongodb"               # MONGODB_URI set: MongoDB unless STORE says otherwise
    monkeypatch.setenv("QUEUE_MAX_SIZE", "7")        # the environment wins over .env
    assert Config().QUEUE_MAX_SIZE == 7


@pytest.mark.parametrize("name, value", [("QUEUE_MAX_SIZE", "many"), ("QUEUE_MAX_SIZE", "0"),
                                         ("BACKEND", "gpu"), ("VRAM_ESTIMATION_MULTIPLIER", "0.5")])
def test_bad_settings_are_refused_by_name(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        Config(_env_file=None)


def test_every_setting_is_documented():
    table = settings_markdown()
    for name, field in Config.model_fields.items():
        assert f"`{name}`" in table and field.description


def test_log_lines_name_time_and_component(tmp_path):
    log_file = tmp_path / "model_manager.log"
    setup_logging(log_file, "INFO", stderr=False)
    get_logger("SCHEDULER").info("plan: load %s", "m")
    get_logger("api").warning("bad request")
    for handler in logging.getLogger("model_manager").handlers:
        handler.flush()
    lines = log_file.read_text().splitlines()
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\.\d{3}\] \[SCHEDULER\] plan: load m", lines[0])
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\.\d{3}\] \[API\] bad request", lines[1])
    setup_logging(None, "INFO", stderr=False)


def test_the_configuration_doc_is_the_generated_table():
    from helpers import ROOT
    doc = (ROOT / "docs" / "configuration.md").read_text().splitlines()
    header = settings_markdown().splitlines()[0]
    assert header in doc, "docs/configuration.md has no settings table: paste `python config.py --markdown` into it"
    start = doc.index(header)
    end = next((i for i in range(start, len(doc)) if not doc[i].startswith("|")), len(doc))
    table = "\n".join(doc[start:end])
    assert table == settings_markdown(), (
        "docs/configuration.md's table is not what `python config.py --markdown` (`model-manager settings`) "
        "prints: paste its output over the table")


def test_the_embedded_runtime_is_started_with_the_services_settings():
    """What `--backend embedded` passes its runtime reaches the runtime's own arguments (not its
    defaults): among them the prompt cache's memory (EMBEDDED_PROMPT_CACHE_MIB)."""
    from embedded_runtime.__main__ import parse_args
    from embedded_runtime.launch import embedded_args

    service = Config(EMBEDDED_PROMPT_CACHE_MIB=512, EMBEDDED_THREADS=3, EMBEDDED_NUM_PARALLEL=2, NUM_CTX=4096)
    args = parse_args(embedded_args(service), Config())
    assert (args.prompt_cache_mib, args.threads, args.parallel, args.num_ctx) == (512, 3, 2, 4096)
    assert Config().EMBEDDED_PROMPT_CACHE_MIB == 0
    with pytest.raises(SystemExit):
        parse_args(["--prompt-cache-mib", "-1"], Config())
