"""Settings for every process, read from the environment (and `.env`) by pydantic-settings.

Names are fixed by CONTRACT.md. A wrong value stops the process at start with one line that
names the variable (`load_or_exit`), exit code 2.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Literal, NoReturn, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
REFERENCE_ONNX = REPO_ARTIFACTS / "tcn_encoder-v0.1.0.onnx"

EXIT_CONFIG = 2


class ConfigError(Exception):
    """A setting is wrong. The message starts with the variable's name; the process exits 2."""


class CommonSettings(BaseSettings):
    """Broker connection and logging, shared by the worker, the bridge and the tools."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    mqtt_host: str = Field("localhost", description="Broker host name or address.")
    mqtt_port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    mqtt_username: str | None = Field(None, description="Broker user name.")
    mqtt_password: SecretStr | None = Field(None, description="Broker password.")
    mqtt_tls: bool = Field(False, description="Connect to the broker over TLS.")
    mqtt_ca_file: Path | None = Field(None, description="CA bundle that signed the broker's cert.")
    mqtt_cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    mqtt_key_file: Path | None = Field(None, description="Client key (mutual TLS).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field("text", description="`json`: one object a line.")
    mqtt_keepalive_s: int = Field(
        15, ge=2, le=3600,
        description="MQTT keepalive: a silent network cut is noticed within about 1.5x this.",
    )

    @model_validator(mode="after")
    def _tls_files_exist(self) -> CommonSettings:
        for name in ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"{name.upper()}: no such file: {path}")
        return self


class WorkerSettings(CommonSettings):
    """The inference worker's settings (CONTRACT.md, "Settings")."""

    worker_id: str = Field(
        default_factory=socket.gethostname,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Names the status topic and the MQTT client id.",
    )
    infer_mode: Literal["hailo", "cpu", "stub"] = Field(
        "stub", description="Backend: hailo (device), cpu (ONNX) or stub (contract double)."
    )
    hailo_fallback: Literal["none", "cpu", "stub"] = Field(
        "none", description="Backend that answers while the Hailo device is down."
    )
    hef_path: Path = Field(Path("/models/tcn_encoder.hef"), description="Compiled model.")
    hef_sha256_file: Path | None = Field(
        None, description="Checksum list; default hef_sha256sum.txt beside HEF_PATH."
    )
    hailo_latent_output: str | None = Field(
        None, description="HEF output holding the latent (default: the one of LATENT_DIM values)."
    )
    hailo_motif_output: str | None = Field(
        None, description="HEF output holding the motif scores (default: by NUM_MOTIFS)."
    )
    onnx_path: Path = Field(REFERENCE_ONNX, description="ONNX model for the cpu backend.")
    num_motifs: int = Field(12, ge=1, le=4096, description="Motif scores per window.")
    latent_dim: int = Field(64, ge=1, le=65536, description="Floats in the latent.")
    window_length: int = Field(100, ge=1, le=100_000, description="Time steps per window.")
    channels: int = Field(9, ge=1, le=1024, description="Channels per time step.")
    batch_max_size: int = Field(8, ge=1, le=256, description="Most windows in one batch.")
    batch_max_wait_ms: float = Field(
        0.0, ge=0, le=10_000,
        description="0: a batch starts as soon as the backend is free; >0 holds it for more.",
    )
    queue_max: int = Field(
        1024, ge=1, le=65535,
        description="Most windows held unanswered; at it, no more are read from the broker.",
    )
    max_payload_bytes: int = Field(
        65536, ge=64, le=256 * 1024 * 1024, description="Larger windows: `too_large`."
    )
    shared_group: str | None = Field(
        None, pattern=r"^[^/+#]+$", description="Shared-subscription group name."
    )
    session_expiry_s: int | None = Field(
        None, ge=0, le=0xFFFFFFFF, description="Default 3600; 0 when SHARED_GROUP is set."
    )
    response_topic_prefix: str = Field(
        "reply/", min_length=1, description="ResponseTopics honoured only under this."
    )
    result_encoding: Literal["msgpack", "json"] = Field(
        "msgpack", description="Encoding of results and errors."
    )
    status_interval_s: float = Field(
        10.0, gt=0, le=86_400, description="Retained status refresh period."
    )
    summary_interval_s: float = Field(
        1.0, ge=0, le=86_400, description="At most how often a sensor's summary goes out; 0: off."
    )
    ha_discovery: bool = Field(False, description="Announce worker and sensors to Home Assistant.")
    ha_discovery_prefix: str = Field(
        "homeassistant", pattern=r"^[^/+#][^+#]*$", description="Home Assistant discovery prefix."
    )
    metrics_port: int = Field(9100, ge=0, le=65535, description="Prometheus port; 0: off.")
    metrics_host: str = Field(
        "127.0.0.1", description="Address /metrics listens on (0.0.0.0: every interface)."
    )
    device_timeout_ms: int = Field(
        1000, ge=1, le=600_000, description="Bound on one device call (the watchdog)."
    )

    @model_validator(mode="after")
    def _derived(self) -> WorkerSettings:
        if self.session_expiry_s is None:
            self.session_expiry_s = 0 if self.shared_group else 3600
        if self.hef_sha256_file is None:
            self.hef_sha256_file = self.hef_path.parent / "hef_sha256sum.txt"
        if self.infer_mode == "hailo" and not self.hef_path.is_file():
            raise ConfigError(f"HEF_PATH: no such file: {self.hef_path}")
        needs_onnx = self.infer_mode == "cpu" or (
            self.infer_mode == "hailo" and self.hailo_fallback == "cpu"
        )
        if needs_onnx and not self.onnx_path.is_file():
            raise ConfigError(f"ONNX_PATH: no such file: {self.onnx_path}")
        return self

    @property
    def window_topic(self) -> str:
        base = "imu/+/window"
        return f"$share/{self.shared_group}/{base}" if self.shared_group else base

    @property
    def status_topic(self) -> str:
        return f"hailo/{self.worker_id}/status"


S = TypeVar("S", bound=BaseSettings)


def describe_error(exc: ValidationError | ConfigError) -> str:
    """One line naming the variable, for a human at a terminal."""
    if isinstance(exc, ConfigError):
        return str(exc)
    err = exc.errors()[0]
    loc = [str(part) for part in err.get("loc", ())]
    name = loc[0].upper() if loc else "settings"
    msg = err.get("msg", "invalid value")
    value = err.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
    return f"{name}: {msg}{shown}"


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: bad setting: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def load_or_exit(cls: type[S], prog: str) -> S:
    """Build settings from the environment, or exit 2 with one line naming the variable."""
    try:
        return cls()
    except (ValidationError, ConfigError) as exc:
        fail(prog, describe_error(exc))


def settings_help(cls: type[BaseSettings]) -> str:
    """The settings, their defaults and descriptions, for `--help` epilogues."""
    lines = ["settings (environment variables, or a .env file):"]
    for name, field in cls.model_fields.items():
        default = field.default if field.default_factory is None else "(computed)"
        lines.append(f"  {name.upper():<22} default {default!s:<28} {field.description or ''}")
    return "\n".join(lines)


# Not credentials, but kept from anyone who can read the logs: a shared group's name is all a
# client needs to join the group and take a share of the windows (mosquitto/README.md).
SECRET_NAMES = frozenset({"shared_group"})


def masked(settings: BaseSettings) -> dict[str, object]:
    """The effective settings, secrets masked, for `--print-config` and the logs."""
    out: dict[str, object] = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = "****" if value.get_secret_value() else ""
        elif name in SECRET_NAMES and value:
            value = "****"
        elif isinstance(value, Path):
            value = str(value)
        out[name.upper()] = value
    return out


class BridgeSettings(CommonSettings):
    """The HTTP bridge's settings (CONTRACT.md, "HTTP bridge")."""

    bridge_host: str = Field("0.0.0.0", description="Listen address.")
    bridge_port: int = Field(9000, ge=1, le=65535, description="Listen port.")
    bridge_token: SecretStr | None = Field(
        None, description="When set, /infer needs `Authorization: Bearer <token>`."
    )
    bridge_timeout_ms: int = Field(2000, ge=1, le=600_000, description="Wait for a worker.")
    bridge_max_body_bytes: int = Field(
        262_144, ge=1024, le=64 * 1024 * 1024, description="Larger /infer bodies get 413."
    )
    bridge_client_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="MQTT client id; default bridge-<host>-<random>, unique per process."
    )
    status_interval_s: float = Field(
        10.0, gt=0, le=86_400, description="Workers' STATUS_INTERVAL_S: fresh = 3x this."
    )
    window_length: int = Field(100, ge=1, le=100_000, description="Time steps per window.")
    channels: int = Field(9, ge=1, le=1024, description="Channels per time step.")
    latent_dim: int = Field(64, ge=1, le=65536, description="Floats in the latent.")
    num_motifs: int = Field(12, ge=1, le=4096, description="Motif scores per window.")


class SimSettings(CommonSettings):
    """`hailo-sim`: MQTT settings come from the environment; the rest are flags."""
