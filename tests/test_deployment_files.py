"""The cluster deployment (deploy/compose.cluster.yml), checked as far as a machine without a
Docker engine can: it parses, its managers' settings are a valid configuration that schedules
both nodes on a replica set with majority writes, and the nodes match the managers."""
import re
from pathlib import Path

import yaml

from config import Config
from helpers import ROOT
from runtime.node_urls import split_node_url

COMPOSE = ROOT / "deploy" / "compose.cluster.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_managers_settings_are_a_valid_configuration_over_both_nodes_and_a_replica_set(tmp_path):
    services = compose()["services"]
    managers = [s for name, s in services.items() if name.startswith("manager-")]
    assert len(managers) == 2
    for manager in managers:
        env = {k: str(v) for k, v in manager["environment"].items()}
        config = Config(_env_file=None, **{**env, "DATA_DIR": tmp_path, "LOG_FILE": tmp_path / "mm.log"})
        nodes = [split_node_url(u) for u in config.runtime_urls]
        ollamas = sorted(name for name in services if name.startswith("ollama-"))
        assert [url for url, _ in nodes] == [f"http://{name}:11434" for name in ollamas]
        assert all(vram for _, vram in nodes)                    # no node's memory left unknown
        assert config.exposure_error() is None                  # open port, keys required
        assert "replicaSet=rs0" in config.MONGODB_URI and "w=majority" in config.MONGODB_URI
        hosts_at = re.match(r"mongodb://([^/]+)/", config.MONGODB_URI)
        assert hosts_at is not None
        hosts = hosts_at.group(1).split(",")
        assert sorted(h.split(":")[0] for h in hosts) == sorted(n for n in services if re.fullmatch(r"mongo-\d", n))
        assert "gunicorn -c gunicorn.conf.py wsgi:app" in manager["command"]    # what tests/test_gunicorn.py runs
        for name in ollamas:
            node = services[name]
            assert node["environment"]["OLLAMA_NUM_PARALLEL"] == env["OLLAMA_NUM_PARALLEL"]
            assert node["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_replica_set_is_initiated_with_every_member():
    services = compose()["services"]
    command = services["mongo-init"]["command"]
    members = sorted(set(re.findall(r"host: '(mongo-\d):27017'", command)))
    assert members == sorted(n for n in services if re.fullmatch(r"mongo-\d", n))
    assert all("--replSet" in services[m]["command"] for m in members)


def test_the_files_the_managers_run_exist():
    assert (ROOT / "gunicorn.conf.py").exists() and (ROOT / "wsgi.py").exists()
    assert Path(COMPOSE.parent / "..").resolve() == ROOT
