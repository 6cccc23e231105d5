"""Service settings: one pydantic-settings class (env prefix ``PTYCHOSTREAM_``), built once per process and injected."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_TOKEN = "dev-token"


class Settings(BaseSettings):
    """Everything the API, the worker loop and the flows read from the environment."""

    model_config = SettingsConfigDict(env_prefix="PTYCHOSTREAM_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Redis for jobs, progress and previews.")
    start_redis: bool = Field(
        default=True, description="Start a local redis-server if redis_url is local and unreachable."
    )
    key_prefix: str = Field(
        default="ptychostream:", description="Prefix of every Redis key (separates deployments, tests)."
    )
    api_token: str = Field(default=DEV_TOKEN, min_length=8, description="Bearer token for mutating calls.")
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

    @model_validator(mode="after")
    def _safe_outside_development(self) -> Settings:
        """Refuse the development token in production, and a lease shorter than two heartbeats."""
        if self.environment == "production" and self.api_token == DEV_TOKEN:
            raise ValueError("PTYCHOSTREAM_API_TOKEN must be set in production")
        if self.lease_s < 2 * self.heartbeat_s:
            raise ValueError("lease_s must be at least twice heartbeat_s")
        return self
