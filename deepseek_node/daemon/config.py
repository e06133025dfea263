"""The daemon's configuration: one YAML file, rendered by the Ansible role, validated strictly.

Unknown keys are errors naming the key (a typo must not silently fall back to a default on a production
node), except inside the free-form `plan` section, which carries the planner's decision and reasons and is
only logged. The same model is built in Python by `provision serve`, so both paths share one validation.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "ApiKeyConfig",
    "AuditConfig",
    "AuthConfig",
    "ConfigError",
    "DType",
    "DaemonConfig",
    "Device",
    "EngineBackend",
    "EngineConfig",
    "EngineKind",
    "ModelConfig",
    "Quantization",
    "Scope",
    "ServerConfig",
    "VllmConfig",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and how to fix it."""


class DType(StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Quantization(StrEnum):
    NONE = "none"
    INT8 = "int8"
    INT4 = "int4"
    FP8 = "fp8"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Scope(StrEnum):
    INFERENCE = "inference"
    METRICS = "metrics"
    ADMIN = "admin"


class EngineBackend(StrEnum):
    """Which batching loop drives the model.

    `continuous_batching` is transformers' own paged-KV manager; `step` is this package's batched decode loop
    over the model's regular KV cache, for architectures the paged cache cannot hold (DeepSeek's MLA caches
    compressed latents whose shape the paged allocator rejects). `auto` tries the former and falls back.
    """

    AUTO = "auto"
    CONTINUOUS_BATCHING = "continuous_batching"
    STEP = "step"


class EngineKind(StrEnum):
    """What serves the model behind the gateway.

    `builtin` is this package's transformers engine (CPU targets, small models, the lab); `vllm` is a vLLM
    OpenAI-compatible server in its own virtualenv on loopback, behind the gateway's TLS, keys and audit.
    """

    BUILTIN = "builtin"
    VLLM = "vllm"


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Strict(BaseModel):
    # forbid: unknown keys are errors; strict: "8443" is not a port, "yes" is not a bool.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_enum_values=False)


class ModelConfig(_Strict):
    path: Path
    served_name: str
    dtype: DType = DType.AUTO
    quantization: Quantization = Quantization.NONE
    device: Device = Device.AUTO
    tensor_parallel: int = Field(1, ge=1, le=64)
    pipeline_parallel: int = Field(1, ge=1, le=64)
    max_context: int = Field(2048, ge=16, le=1_048_576)

    @field_validator("served_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                "must be 1-128 characters of letters, digits and ._:/- (it is the API's model id)"
            )
        return v

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        # YAML gives a str; strict mode would refuse it for a Path, so convert explicitly here.
        return Path(v) if isinstance(v, str) else v

    @field_validator("dtype", "quantization", "device", mode="before")
    @classmethod
    def _enum(cls, v: Any, info: Any) -> Any:
        enum = {"dtype": DType, "quantization": Quantization, "device": Device}[info.field_name]
        if isinstance(v, str):
            try:
                return enum(v)
            except ValueError:
                allowed = "|".join(e.value for e in enum)
                raise ValueError(f"{v!r} is not one of {allowed}") from None
        return v


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535)  # 0 = any free port (tests)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # TLS 1.3 only by default; "1.2" also admits TLS 1.2 clients, with forward-secret AEAD suites only.
    tls_min_version: str = "1.3"
    # Mutual TLS: clients must present a certificate signed by this CA (in addition to their API key).
    tls_client_ca: Path | None = None
    # Requests larger than this are refused with 413 before they are parsed.
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Generation requests one API key may have in flight (admitted or queued); beyond it, 429. Keeps one
    # tenant from filling the queue for everyone. Per-key `max_concurrent` overrides it.
    max_concurrent_per_key: int = Field(64, ge=1, le=100_000)
    # Slow or idle clients must not hold descriptors: a request head must be complete this long after the
    # connection opens (or its previous response ends), a body may not stall longer than idle_timeout_s,
    # and one client address may hold at most max_connections_per_client connections.
    request_head_timeout_s: float = Field(10.0, gt=0, le=600)
    idle_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_connections_per_client: int = Field(256, ge=1, le=65_536)

    @field_validator("tls_cert", "tls_key", "tls_client_ca", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return Path(v) if isinstance(v, str) else v

    @field_validator("request_head_timeout_s", "idle_timeout_s", mode="before")
    @classmethod
    def _seconds(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("tls_min_version")
    @classmethod
    def _tls_version(cls, v: str) -> str:
        if v not in ("1.2", "1.3"):
            raise ValueError(f"{v!r} is not a TLS version this server offers: use 1.3 (default) or 1.2")
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (HTTPS) or neither (plain HTTP)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "tls_client_ca (mutual TLS) needs tls_cert and tls_key: the server must speak TLS"
            )
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class EngineConfig(_Strict):
    kind: EngineKind = EngineKind.BUILTIN
    max_running: int = Field(16, ge=1, le=4096)
    max_queue: int = Field(64, ge=0, le=1_000_000)
    # max_tokens for requests without one; None: the rest of the context (as vLLM and OpenAI do), so a
    # reasoning model (R1 thinks for thousands of tokens) is not cut off mid-thought by a default.
    default_max_tokens: int | None = Field(None, ge=1)
    shutdown_grace_s: float = Field(30, ge=0, le=3600)
    # Optional tuning; the Ansible role does not have to render these.
    backend: EngineBackend = EngineBackend.AUTO
    max_batch_tokens: int = Field(2048, ge=16)  # prompt tokens prefilled in one step
    kv_page_size: int = Field(32, ge=4)  # paged-KV page (continuous_batching backend)
    kv_cache_blocks: int | None = Field(None, ge=1)  # None: enough for max_running full contexts
    warmup: bool = True
    retry_after_s: int = Field(1, ge=1, le=3600)
    seed: int | None = None  # engine-wide sampling seed for requests without one (None: random)
    # CPU inference only: torch intra-op threads. None: all cores but one, which stays free for the HTTP
    # event loop (oversubscribed OpenMP threads made a tiny model 30x slower in measurements here).
    cpu_threads: int | None = Field(None, ge=1, le=1024)
    # The model runs in a child process so its Python-side kernel launches do not compete with the HTTP
    # event loop for the GIL (see engine_proc.py); False runs it as a thread (tests, debugging).
    separate_process: bool = True

    @field_validator("backend", "kind", mode="before")
    @classmethod
    def _backend(cls, v: Any, info: Any) -> Any:
        enum = {"backend": EngineBackend, "kind": EngineKind}[info.field_name]
        if isinstance(v, str):
            try:
                return enum(v)
            except ValueError:
                raise ValueError(f"{v!r} is not one of {'|'.join(e.value for e in enum)}") from None
        return v

    @field_validator("shutdown_grace_s", mode="before")
    @classmethod
    def _grace(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class VllmConfig(_Strict):
    """The vLLM engine: either started by the daemon (`python` + `args`) or run by its own unit (`url`).

    The internal credential never appears in an argv: the daemon hands a child its key through the
    environment (VLLM_API_KEY); a separately supervised engine reads it from `api_key_file` as the daemon
    does.
    """

    # Managed: the daemon starts `python -m vllm.entrypoints.openai.api_server ARGS` on loopback.
    python: Path | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    # External: an engine unit already listening here (loopback), sharing the key in api_key_file.
    url: str | None = None
    api_key_file: Path | None = None
    startup_timeout_s: float = Field(1800, ge=1, le=86_400)
    health_interval_s: float = Field(2.0, gt=0, le=60)

    @field_validator("python", "api_key_file", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return Path(v) if isinstance(v, str) else v

    @field_validator("startup_timeout_s", "health_interval_s", mode="before")
    @classmethod
    def _float(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"http://(127\.0\.0\.1|\[::1\]|localhost):\d{1,5}", v):
            raise ValueError(
                "must be http://127.0.0.1:PORT (or [::1] / localhost): the engine listens on loopback only, "
                "behind the gateway's TLS and keys"
            )
        return v

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        for a in v:
            if a == "--api-key" or a.startswith("--api-key="):
                raise ValueError(
                    "--api-key must not be in the engine's arguments (any user can read a process's argv); "
                    "the daemon passes the engine's key through its environment"
                )
        return v

    @model_validator(mode="after")
    def _mode(self) -> VllmConfig:
        managed = self.python is not None
        external = self.url is not None
        if managed == external:
            raise ValueError(
                "set either python (+ args: the daemon starts vLLM) or url + api_key_file (vLLM runs as its "
                "own unit), not both and not neither"
            )
        if external and self.api_key_file is None:
            raise ValueError("url needs api_key_file: the internal credential the engine unit also reads")
        if managed and not any(a == "--model" or a.startswith("--model=") for a in self.args):
            raise ValueError("args must name the model (--model DIR)")
        return self

    @property
    def managed(self) -> bool:
        return self.python is not None


class ApiKeyConfig(_Strict):
    id: str
    sha256: str
    scopes: list[Scope] = Field(min_length=1)
    models: list[str] = Field(default_factory=list)  # empty = every served model
    # Generation requests this key may have in flight at once (None: the server's per-key default).
    max_concurrent: int | None = Field(None, ge=1, le=100_000)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _KEY_ID_RE.match(v):
            raise ValueError("must be 1-64 characters of letters, digits and ._- (it appears in audit lines)")
        return v

    @field_validator("sha256")
    @classmethod
    def _hash(cls, v: str) -> str:
        v = v.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be the 64-hex-digit SHA-256 of the key (`printf %s KEY | sha256sum`)")
        return v

    @field_validator("scopes", mode="before")
    @classmethod
    def _scopes(cls, v: Any) -> Any:
        if isinstance(v, list):
            out = []
            for s in v:
                try:
                    out.append(Scope(s) if isinstance(s, str) else s)
                except ValueError:
                    raise ValueError(f"{s!r} is not a scope: use inference, metrics or admin") from None
            return out
        return v


class AuthConfig(_Strict):
    api_keys: list[ApiKeyConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        ids = [k.id for k in self.api_keys]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"api key ids must be unique; repeated: {', '.join(sorted(dup))}")
        hashes = [k.sha256 for k in self.api_keys]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two api keys have the same sha256: each key must be distinct")
        return self


class AuditConfig(_Strict):
    path: Path | None = None  # None: JSON lines on stdout (the journal)
    log_content: bool = False
    redact: bool = True

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return Path(v) if isinstance(v, str) else v


class GroupWorker(_Strict):
    host: str = Field(min_length=1)
    address: str

    @field_validator("address")
    @classmethod
    def _ip(cls, v: str) -> str:
        import ipaddress

        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(
                f"{v!r} is not an IP address (the address the worker uses in its group)"
            ) from None


class GroupConfig(_Strict):
    """This node is the head of a serving group (vLLM across several servers); its readiness covers the
    workers, and metrics name the group."""

    name: str = Field(min_length=1)
    workers: list[GroupWorker] = Field(min_length=1)
    # A lost worker leaves the head's engine unable to serve: stop it so its unit restarts it and it
    # waits for the workers to join again.
    restart_engine_on_loss: bool = True
    # The head's engine unit (a sibling of the gateway's own unit in the same slice).
    engine_unit: str = Field(default="deepseek-node-engine.service", pattern=r"^[A-Za-z0-9:_.@-]+\.service$")


class DaemonConfig(_Strict):
    model: ModelConfig
    server: ServerConfig = Field(default_factory=ServerConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    auth: AuthConfig
    audit: AuditConfig = Field(default_factory=AuditConfig)
    vllm: VllmConfig | None = None
    group: GroupConfig | None = None
    plan: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cross(self) -> DaemonConfig:
        if (
            self.engine.default_max_tokens is not None
            and self.engine.default_max_tokens >= self.model.max_context
        ):
            raise ValueError(
                f"engine.default_max_tokens ({self.engine.default_max_tokens}) must be below model.max_context "
                f"({self.model.max_context}) so a prompt still fits"
            )
        if self.engine.kind is EngineKind.VLLM and self.vllm is None:
            raise ValueError("engine.kind is vllm: add a vllm section (python + args, or url + api_key_file)")
        if self.engine.kind is not EngineKind.VLLM and self.vllm is not None:
            raise ValueError("a vllm section is set but engine.kind is builtin: set engine.kind: vllm")
        if self.group is not None and (self.vllm is None or self.vllm.managed):
            raise ValueError(
                "a group section needs vLLM as its own unit (vllm.url): a serving group's engine runs under "
                "systemd on every member"
            )
        for key in self.auth.api_keys:
            unknown = [m for m in key.models if m != self.model.served_name]
            if unknown:
                raise ValueError(
                    f"auth.api_keys[{key.id}].models names {', '.join(unknown)}, but this node serves only "
                    f"{self.model.served_name!r}"
                )
        return self


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys accepted at `loc` (for the 'unknown key' message), or None if it cannot be resolved."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", None)
        if args:  # list[X] / X | None
            ann = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        current = ann
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def _format(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(DaemonConfig, loc)
            hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
            lines.append(f"{where}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where or '(top level)'}: {msg}")
    return f"{source}: invalid configuration:\n  " + "\n  ".join(lines)


def parse_config(data: Any, source: str = "config") -> DaemonConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping with model, server, engine, auth, audit, plan"
        )
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def load_config(path: str | Path) -> DaemonConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))
