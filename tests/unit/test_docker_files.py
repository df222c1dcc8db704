"""docker/Dockerfile and docker/compose.yml, checked without a Docker engine: what they copy and
mount exists, and their ports, paths and service names agree with each other and with the config."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from shardq.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKER / "Dockerfile"))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    return [(i["instruction"], re.sub(r"\s+", " ", i["value"]).strip())
            for i in dockerfile().structure if i["instruction"] != "COMMENT"]


def dockerignore() -> list[str]:
    return [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines()
            if x.strip() and not x.startswith("#")]


@pytest.fixture
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def test_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    copies = [args.split() for word, args in dockerfile_instructions() if word == "COPY"]
    assert copies
    ignored = dockerignore()
    for args in copies:
        for source in args[:-1]:
            assert (ROOT / source).exists(), source
            assert not any(fnmatch.fnmatch(source, pat) for pat in ignored), (source, "is in .dockerignore")


def test_dockerfile_serves_on_the_configured_ports_with_its_data_dir() -> None:
    ins = dockerfile_instructions()
    exposed = {int(p) for word, args in ins if word == "EXPOSE" for p in args.split()}
    defaults = load_config(env={})
    assert exposed == {defaults.broker.port, defaults.monitoring.prometheus_port}
    assert defaults.broker.host == "0.0.0.0"  # reachable from outside the container
    env = {k: v for k, v in dockerfile().envs.items() if k.startswith("SHARDQ_")}
    assert env, "the image sets its data dir through the environment"
    cfg = load_config(env=env)  # the image's environment is a valid configuration
    volume = next(a for w, a in ins if w == "VOLUME")
    assert cfg.persistence.data_dir in volume
    assert dockerfile().baseimage.startswith("python:3.11")
    assert ("ENTRYPOINT", '["shardq", "serve"]') in ins
    assert ("USER", "shardq") in ins
    health = next(a for w, a in ins if w == "HEALTHCHECK")
    assert '"shardq", "stats"' in health


def test_compose_mounts_what_exists_and_wires_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"shardq", "prometheus", "grafana"}
    build = services["shardq"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    for name, svc in services.items():
        for mount in svc.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source.startswith("."):
                assert (DOCKER / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
    defaults = load_config(env={})
    assert f"{defaults.broker.port}:{defaults.broker.port}" in services["shardq"]["ports"]
    port = defaults.monitoring.prometheus_port
    assert f"{port}:{port}" in services["shardq"]["ports"]
    # Prometheus scrapes the shardq service by its compose name; Grafana reads that Prometheus.
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"shardq:{port}"]
    source = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]
    provider = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "shardq.yml").read_text())
    dash_dir = provider["providers"][0]["options"]["path"]
    assert any(m.endswith(f":{dash_dir}/shardq.json:ro") and m.startswith("./grafana/shardq.json")
               for m in services["grafana"]["volumes"])
