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
    assert exposed == {defaults.broker.port, defaults.api.rest_port, defaults.api.grpc_port,
                       defaults.monitoring.prometheus_port}
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
    # `shardq ping` needs no API key, and reads SHARDQ_URL / SHARDQ_TLS_* when TLS is on
    assert '"shardq", "ping"' in health


def test_the_tls_override_serves_tls_with_mounted_certificates_and_a_working_health_check() -> None:
    base = yaml.safe_load((DOCKER / "compose.yml").read_text())
    override = yaml.safe_load((DOCKER / "compose.tls.yml").read_text())
    assert set(override["services"]) <= set(base["services"])
    svc = override["services"]["shardq"]
    env = {k: str(v) for k, v in svc["environment"].items()}
    cfg = load_config(env={k: v for k, v in env.items() if "__" in k})  # valid config keys
    assert cfg.api.tls_enabled and cfg.api.tls_cert_file and cfg.api.tls_key_file
    mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
    for path in (cfg.api.tls_cert_file, cfg.api.tls_key_file, env["SHARDQ_TLS_CA"]):
        target = str(Path(path).parent)
        assert target in mounts, path
        assert (DOCKER / mounts[target]).is_dir()
    # the health check connects by the service name over TLS, trusting the mounted CA
    assert env["SHARDQ_URL"] == f"shardqs://shardq:{cfg.broker.port}"
    # Prometheus scrapes over https with that CA
    prom = override["services"]["prometheus"]
    config_file = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    scrape = yaml.safe_load((DOCKER / "prometheus" / Path(config_file).name).read_text())
    job = scrape["scrape_configs"][0]
    assert job["scheme"] == "https"
    ca = job["tls_config"]["ca_file"]
    prom_mounts = {m.split(":")[1]: m.split(":")[0] for m in prom["volumes"]}
    assert prom_mounts[str(Path(ca).parent)] == mounts[str(Path(env["SHARDQ_TLS_CA"]).parent)]
    assert job["static_configs"][0]["targets"] == [f"shardq:{cfg.monitoring.prometheus_port}"]


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
    assert "9092:9090" in services["prometheus"]["ports"]  # the host's 9090 is the gRPC API's
    grpc = defaults.api.grpc_port
    assert f"{grpc}:{grpc}" in services["shardq"]["ports"]
    provider = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "shardq.yml").read_text())
    dash_dir = provider["providers"][0]["options"]["path"]
    assert any(m.endswith(f":{dash_dir}/shardq.json:ro") and m.startswith("./grafana/shardq.json")
               for m in services["grafana"]["volumes"])
