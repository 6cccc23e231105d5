"""Docker, compose, Prefect and Kubernetes files: parse them and check the keys the stack relies on."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_dockerfiles_are_slim_non_root_and_healthchecked() -> None:
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (ROOT / "docker" / name).read_text()
        assert "USER ptycho" in text and "HEALTHCHECK" in text and "--no-cache-dir" in text, name
        assert "torch==2.13.0" in text, name


def test_compose_has_the_whole_stack() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "prefect", "api", "worker", "detector"} <= set(services)
    for name in ("api", "worker", "detector"):
        build = services[name]["build"]
        assert (ROOT / "docker" / build["context"] / build["dockerfile"]).is_file()
        assert services[name]["environment"]["PTYCHOSTREAM_REDIS_URL"].startswith("redis://redis:")
    assert services["worker"]["command"][:3] == ["ptychostream", "worker", "--queue"]
    assert "healthcheck" in services["redis"]


def test_prefect_yaml_declares_cpu_and_gpu_deployments_of_the_flow() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in config["deployments"]}
    assert pools == {"ptychostream-cpu", "ptychostream-gpu"}
    fields = {f"PTYCHOSTREAM_{name.upper()}" for name in Settings.model_fields}
    for deployment in config["deployments"]:
        module, _, name = deployment["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
        assert flow.name == "reconstruct" and set(flow.parameters.properties) == {"job_id"}
        assert "parameters" not in deployment  # settings come from the environment only, read by the flow
        env = deployment["work_pool"]["job_variables"]["env"]
        assert "PTYCHOSTREAM_REDIS_URL" in env and {k for k in env if k.startswith("PTYCHOSTREAM_")} <= fields


def test_kubernetes_manifests_have_the_required_keys() -> None:
    docs = [d for p in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")) for d in load_all(p)]
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc) and doc["metadata"]["name"].startswith("ptychostream")
        kinds.setdefault(doc["kind"], []).append(doc)
    deployments = {d["metadata"]["name"]: d for d in kinds["Deployment"]}
    assert {"ptychostream-api", "ptychostream-worker-gpu", "ptychostream-redis", "ptychostream-prefect"} <= set(
        deployments
    )
    for d in deployments.values():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert all(c["image"] for c in d["spec"]["template"]["spec"]["containers"])
    services = {s["spec"]["selector"]["app"] for s in kinds["Service"]}
    assert {"ptychostream-api", "ptychostream-redis", "ptychostream-prefect"} <= services
    gpu = deployments["ptychostream-worker-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    config = kinds["ConfigMap"][0]["data"]
    fields = {f"PTYCHOSTREAM_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in config if k.startswith("PTYCHOSTREAM_")} <= fields
    assert config["PTYCHOSTREAM_ENVIRONMENT"] == "production"
