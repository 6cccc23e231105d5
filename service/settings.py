"""Service settings: one pydantic-settings class (env prefix ``PTYCHOSTREAM_``), built once per process and injected."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.tokens import token_problem

DEV_TOKEN = "dev-token"


class Settings(BaseSettings):
    """Everything the API, the worker loop and the flows read from the environment."""

    model_config = SettingsConfigDict(env_prefix="PTYCHOSTREAM_", extra="ignore", hide_input_in_errors=True)

    environment: Literal["development", "production"] = "development"
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis for jobs, progress and previews.")
    start_redis: bool = Field(
        default=True, description="Start a local redis-server if redis_url is local and unreachable."
    )
    key_prefix: str = Field(
        default="",
        description="Prefix of every Redis key (separates instances, deployments, tests). Empty: one per instance, "
        "derived from the results root (``ptychostream:<8 hex digits>:``), so servers started in different "
        "folders never share jobs.",
    )
    api_token: str = Field(
        default=DEV_TOKEN, min_length=8, description="Bearer token for mutating calls (it also grants reads)."
    )
    read_access: Literal["open", "token"] = Field(
        default="open",
        description="Who may read jobs, results, previews, logs and event streams: anyone (open) or holders of "
        "the API token, the read token or a dashboard session (token). Default: token in production, open in "
        "development. Health, metrics, the dashboard page and the API docs are always open.",
    )
    read_token: str | None = Field(
        default=None, min_length=8, description="A second bearer token that grants reads only (optional)."
    )
    session_s: float = Field(
        default=12 * 3600.0, gt=0, le=30 * 86400, description="Lifetime of a dashboard session cookie."
    )
    max_event_streams: int = Field(
        default=1000,
        ge=1,
        description="Open event streams (SSE) per API process; more are refused (503). Each holds a socket: "
        "the process needs that many file descriptors.",
    )
    stream_hosts: list[str] = Field(
        default=["127.0.0.1", "localhost"],
        min_length=1,
        description="Interfaces a stream job may bind (its stream and positions endpoints), e.g. 0.0.0.0 in a "
        "container.",
    )
    stream_port_min: int = Field(default=1024, ge=1, le=65535, description="Lowest port a stream job may bind.")
    stream_port_max: int = Field(default=65535, ge=1, le=65535, description="Highest port a stream job may bind.")
    result_image_cache_bytes: int = Field(
        default=64 * 1024 * 1024, ge=0, description="Rendered result PNGs kept in memory (per API process)."
    )
    data_root: Path = Field(default=Path("data"), description="Input files resolve under this directory only.")
    results_root: Path = Field(default=Path("results"), description="Where workers write results and checkpoints.")
    max_body_bytes: int = Field(default=64 * 1024, gt=0, description="Largest accepted request body.")
    heartbeat_s: float = Field(default=1.0, gt=0, description="How often a worker renews its lease on a running job.")
    lease_s: float = Field(
        default=10.0, gt=0, description="A running job whose lease is this old is failed (worker lost)."
    )
    reaper_interval_s: float = Field(default=2.0, gt=0, description="How often the API checks running jobs' leases.")
    preview_interval_s: float = Field(default=0.5, gt=0, description="Least time between two published previews.")
    reply_cache_s: float = Field(
        default=0.25, ge=0, description="Status, list, preview and health replies are reused this long (0: never)."
    )
    save_interval_s: float = Field(
        default=30.0, gt=0, description="A running job saves its checkpoint and partial result at least this often."
    )
    prefect_start_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long ``serve`` (and ``worker --queue``) wait for the temporary Prefect server they start "
        "when PREFECT_API_URL is unset; Prefect's own default (20 s) is too short on a loaded machine.",
    )
    prefect_start_attempts: int = Field(
        default=2, ge=1, le=10, description="Starts of the temporary Prefect server before giving up."
    )

    @model_validator(mode="before")
    @classmethod
    def _read_access_default(cls, data: Any) -> Any:
        """Reads need a token in production unless ``read_access`` says otherwise; open in development."""
        if isinstance(data, dict) and data.get("read_access") is None:
            production = data.get("environment", "development") == "production"
            data = {**data, "read_access": "token" if production else "open"}
        return data

    @model_validator(mode="after")
    def _instance_key_prefix(self) -> Settings:
        """An empty ``key_prefix`` becomes this instance's own (``instance_prefix``)."""
        if not self.key_prefix:
            self.key_prefix = instance_prefix(self.results_root)
        return self

    @model_validator(mode="after")
    def _safe_outside_development(self) -> Settings:
        """Refuse weak tokens in production (``service.tokens``), a lease shorter than two heartbeats and an
        empty port range."""
        if self.environment == "production":
            for name, token in (("API_TOKEN", self.api_token), ("READ_TOKEN", self.read_token)):
                if token is not None and (problem := token_problem(token)):
                    raise ValueError(f"PTYCHOSTREAM_{name} is not fit for production: {problem}")
        if self.lease_s < 2 * self.heartbeat_s:
            raise ValueError("lease_s must be at least twice heartbeat_s")
        if self.stream_port_min > self.stream_port_max:
            raise ValueError("stream_port_min must not exceed stream_port_max")
        return self


def instance_prefix(results_root: Path) -> str:
    """``ptychostream:<8 hex digits>:``, the digits from the absolute results root: one prefix per instance."""
    digest = hashlib.sha256(str(results_root.resolve()).encode()).hexdigest()[:8]
    return f"ptychostream:{digest}:"
