"""The tokens shipped in deploy/ and docker/ are placeholders the production policy refuses; the shipped
production settings (the ConfigMap, compose's environment) load once a real token is given."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def k8s(kind: str) -> dict:
    docs = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "config.yaml").read_text())
    return next(d for d in docs if d and d["kind"] == kind)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        if key.startswith("PTYCHOSTREAM_"):
            monkeypatch.setenv(key, value)
    return Settings()


def test_the_kubernetes_secret_placeholder_is_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**k8s("ConfigMap")["data"], **k8s("Secret")["stringData"]}
    with pytest.raises(ValidationError, match="PTYCHOSTREAM_API_TOKEN is not fit for production"):
        settings_from(env, monkeypatch)
    settings = settings_from({**env, "PTYCHOSTREAM_API_TOKEN": secrets.token_urlsafe(32)}, monkeypatch)
    assert settings.read_access == "token" and settings.stream_hosts == ["0.0.0.0"]
    assert (settings.stream_port_min, settings.stream_port_max) == (5555, 5599)


def test_compose_has_no_default_token_and_runs_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    env = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["x-ptychostream-env"]
    token = env.pop("PTYCHOSTREAM_API_TOKEN")
    assert token.startswith("${PTYCHOSTREAM_API_TOKEN:?"), token  # compose refuses to start without it
    settings = settings_from({**env, "PTYCHOSTREAM_API_TOKEN": secrets.token_urlsafe(32)}, monkeypatch)
    assert settings.environment == "production" and settings.read_access == "token"
    for old in ("change-me-please", "replace-me-before-deploying", "dev-token"):  # the placeholders once shipped
        with pytest.raises(ValidationError, match="not fit for production"):
            settings_from({**env, "PTYCHOSTREAM_API_TOKEN": old}, monkeypatch)
