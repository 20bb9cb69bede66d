"""Settings: the only place that reads the environment.

Every value comes from an environment variable prefixed ``CORRAL_`` or from the settings file named
by ``CORRAL_SETTINGS_FILE`` (a dotenv-style ``KEY=value`` file). In development a secret key is
generated once and kept in the data directory; in production it must be given explicitly and must not
be a placeholder.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "password", "corral", "development", "dev", "test", "xxx"}
)
MIN_SECRET_LENGTH = 32


class Environment(StrEnum):
    development = "development"
    production = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CORRAL_",
        env_file=os.environ.get("CORRAL_SETTINGS_FILE"),
        extra="ignore",
    )

    env: Environment = Environment.development
    data_dir: Path = Path.home() / ".local" / "share" / "corral"
    database_url: str | None = None
    secret_key: str | None = None
    base_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000

    # TLS served directly by ``corral serve`` (otherwise a TLS proxy in front).
    tls: bool = False
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    # Addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto headers are believed.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Admin sessions
    session_idle_minutes: int = 30
    session_absolute_hours: int = 12

    # Sign-in throttling (auth_service): failures counted per known client (a browser that signed in to the
    # account before), or, from other clients, per account, per account and address, and per address. Past a
    # key's free failures each further failure delays the next attempt: first delay, doubling, capped. A key
    # is forgotten after the window with neither a failure nor a delay.
    signin_window_minutes: int = Field(default=15, ge=1)
    signin_max_failures_per_account: int = Field(default=10, ge=1)
    signin_max_failures_per_account_and_client: int = Field(default=5, ge=1)
    signin_max_failures_per_client: int = Field(default=20, ge=1)
    signin_max_failures_per_known_client: int = Field(default=5, ge=1)
    signin_first_delay_seconds: int = Field(default=60, ge=1)
    signin_max_delay_minutes: int = Field(default=15, ge=1)
    signin_known_client_days: int = Field(default=90, ge=1)

    bootstrap_admin_email: str = "admin@corral.local"

    # Identity providers (OIDC): Corral fetches an issuer's discovery document, its keys and its token
    # endpoint only at public addresses, unless this allows loopback, private and link-local ones too (a
    # provider on the organisation's own network). See docs/operations.md, security notes.
    oidc_allow_private_issuers: bool = False

    # Devices
    stale_device_days: int = 30
    # Check-in interval right after enrollment (seconds), for how long, and then.
    checkin_interval_new_seconds: int = 180
    checkin_new_period_minutes: int = 60
    checkin_interval_seconds: int = 8 * 3600
    # Wake-up stream (GET /device/v1/events): seconds between heartbeat comments.
    push_heartbeat_seconds: int = Field(default=25, ge=1)
    # A check-in that changes nothing else records the device's last check-in time and address in memory;
    # they are written for all such devices at once every this many seconds (0: in each check-in's own
    # transaction). The admin center shows a last check-in at most this late.
    last_seen_flush_seconds: float = Field(default=5, ge=0, le=300)
    # Authenticate devices by an RFC 9440 Client-Cert header (the certificate a TLS-terminating proxy
    # verified), as an alternative to request signatures; honoured only from CORRAL_TRUSTED_PROXIES.
    client_cert_header: bool = False
    # Refused device requests, per client address (its /64 for IPv6; see trusted_proxies), counted in this
    # process's memory, in the `limits` notation ("30/minute", "100 per 10 minutes"). Past the first limit,
    # refused device authentications are answered 429 with Retry-After instead of 401 (authenticated
    # requests are never counted or held back). Past the second, every enrollment from the address is
    # answered 429 until the window has passed (successful enrollments do not count).
    device_auth_refusal_limit: str = "60/minute"
    device_enroll_refusal_limit: str = "30/minute"
    # Refusals in the audit log (corral/audit/refusals.py): the first of a kind (reason and client address, or
    # reason and device or enrollment token) at once, the rest as one summary row per kind every this many
    # seconds; at most this many kinds tracked at once (further ones are aggregated by reason alone).
    audit_refusal_window_seconds: float = Field(default=300, ge=1, le=86_400)
    audit_refusal_max_keys: int = Field(default=1000, ge=1, le=100_000)

    # Request body limits in bytes, by route family, enforced while the body streams: a larger declared
    # Content-Length or chunked body is answered 413 (docs/operations.md, security notes). Uploads of later
    # features declare their own limit in corral/body_limits.py.
    max_body_device_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)  # /device/v1
    max_body_apple_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # /apple/v1 (a Mac's app list)
    max_body_api_bytes: int = Field(default=1024 * 1024, ge=1024)  # /api/v1
    max_body_scim_bytes: int = Field(default=1024 * 1024, ge=1024)  # /scim/v2
    max_body_policy_document_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)  # policies apply
    max_body_form_bytes: int = Field(default=1024 * 1024, ge=1024)  # /portal and every other path

    # Apple MDM enrollment (docs/apple-mdm.md). The enrollment profile refuses a plain-http base URL unless
    # this is true (tests and demos: a real device will not talk MDM without TLS).
    apple_allow_http: bool = False
    # How long the SCEP challenge in a downloaded enrollment profile stays good (it is good for one
    # certificate), and how long the identity SCEP issues is valid.
    apple_scep_challenge_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 86_400)
    apple_identity_days: int = Field(default=730, ge=1, le=3650)
    # SCEP requests encrypted with DES or 3DES (Debian's and older scepclients send single DES whatever the
    # server advertises) are accepted; false accepts AES only. Inside HTTPS, the cipher only protects the
    # one-time challenge and the CSR.
    apple_scep_allow_des: bool = True
    # APNs, the push service that wakes Apple devices (the worker's apple.push job sends the pushes). The URL
    # and CA file are for tests and stand-ins (Apple's is HTTPS with publicly trusted certificates: no CA file
    # is needed). Pushes in flight at once (over one HTTP/2 connection); a push APNs asks to retry (busy,
    # unreachable) waits 5 s·2^attempts (at most 15 min, ±20 %) and is dropped after this many attempts
    # (12: about 80 minutes; the device's own periodic check-in then brings what it was woken for).
    apple_apns_url: str = "https://api.push.apple.com"
    apple_apns_ca_file: Path | None = None
    apple_push_concurrency: int = Field(default=256, ge=1, le=1000)
    apple_push_max_attempts: int = Field(default=12, ge=1, le=100)
    # How often the worker looks for pushes due that no job is waiting for (one lost with a worker that died).
    apple_push_sweep_cron: str = "* * * * *"

    db_pool_size: int = 10
    db_max_overflow: int = 10

    # Background jobs (procrastinate, corral.worker): `corral serve` also runs a worker unless this is false.
    embedded_worker: bool = True
    # Jobs one worker process runs at the same time, and how long it waits for them at shutdown (seconds)
    # before aborting them.
    worker_concurrency: int = Field(default=4, ge=1, le=64)
    worker_shutdown_seconds: float = Field(default=10, ge=0)
    # Housekeeping schedules (cron: minute hour day month weekday, UTC; an optional sixth field for seconds).
    housekeeping_nonces_cron: str = "*/10 * * * *"
    housekeeping_sessions_cron: str = "*/15 * * * *"
    housekeeping_signin_throttles_cron: str = "*/15 * * * *"
    housekeeping_commands_cron: str = "*/5 * * * *"
    housekeeping_stalled_jobs_cron: str = "*/5 * * * *"
    housekeeping_finished_jobs_cron: str = "17 * * * *"
    housekeeping_checkin_days_cron: str = "23 3 * * *"
    # The days each device checked in are kept this long (the dashboard charts the last 7).
    checkin_days_retention_days: int = Field(default=35, ge=7, le=3650)
    # Rows deleted or updated per statement, so a large backlog never holds locks for long.
    housekeeping_batch_size: int = Field(default=5000, ge=1, le=100_000)
    # Finished jobs (succeeded, failed, aborted, cancelled) are kept this long for inspection.
    job_retention_hours: int = Field(default=168, ge=1)
    # History kept this many days, then deleted by the worker (0: kept for ever; docs/operations.md, "Data
    # retention"): the audit log, devices' inventory changes, finished commands, compliance state changes.
    housekeeping_retention_cron: str = "41 2 * * *"
    audit_retention_days: int = Field(default=365, ge=0, le=36500)  # 0, or at least 30 (the database's floor)
    inventory_history_retention_days: int = Field(default=180, ge=0, le=36500)
    command_retention_days: int = Field(default=180, ge=0, le=36500)
    compliance_history_retention_days: int = Field(default=365, ge=0, le=36500)

    # Outgoing e-mail (compliance notifications): none is sent while smtp_host is empty.
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: str = ""
    # "starttls" (upgrade a plain connection), "tls" (TLS from the start, port 465) or "none" (a relay on
    # loopback).
    smtp_security: str = Field(default="starttls", pattern="^(starttls|tls|none)$")
    smtp_from: str = "Corral <corral@localhost>"
    smtp_timeout_seconds: float = Field(default=15, gt=0, le=120)
    # How often the worker evaluates compliance that changes with time and takes the actions that fall due.
    compliance_cron: str = "*/5 * * * *"

    # Device requests one process serves at the same time (0: the connections its pool keeps open,
    # db_pool_size; the overflow is left to the rest); one finding no place within
    # device_admission_wait_seconds gets 429 + Retry-After.
    device_concurrency: int = Field(default=0, ge=0, le=10_000)
    device_admission_wait_seconds: float = Field(default=2.0, ge=0, le=60)
    device_retry_after_seconds: int = Field(default=5, ge=1, le=3600)

    # Desired-state documents one process builds at the same time; beyond, a fetch waits for a place up to
    # device_admission_wait_seconds, then gets 429 with Retry-After (seconds) and comes back later (the agent
    # adds jitter).
    desired_state_concurrency: int = Field(default=16, ge=1, le=1024)
    desired_state_retry_after_seconds: int = Field(default=30, ge=1, le=3600)

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("audit_retention_days")
    @classmethod
    def _audit_floor(cls, value: int) -> int:
        if 0 < value < 30:
            raise ValueError("audit events are kept at least 30 days (0 keeps them for ever)")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("device_auth_refusal_limit", "device_enroll_refusal_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str) -> str:
        from corral.kit.rate_limit import parse_limit

        parse_limit(value)
        return value

    @field_validator(
        "housekeeping_nonces_cron",
        "housekeeping_sessions_cron",
        "housekeeping_signin_throttles_cron",
        "housekeeping_commands_cron",
        "housekeeping_stalled_jobs_cron",
        "housekeeping_finished_jobs_cron",
        "housekeeping_checkin_days_cron",
        "housekeeping_retention_cron",
        "compliance_cron",
        "apple_push_sweep_cron",
    )
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from croniter import croniter

        value = " ".join(value.split())
        if not croniter.is_valid(value):
            raise ValueError(f"not a cron expression: {value!r} (e.g. '*/15 * * * *')")
        return value

    @field_validator("base_url")
    @classmethod
    def _valid_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(
                "CORRAL_BASE_URL must be an absolute http(s) URL, e.g. https://corral.example.com"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _production_rules(self) -> Settings:
        if self.env is Environment.production:
            if not self.secret_key:
                raise ValueError("CORRAL_SECRET_KEY is required when CORRAL_ENV=production")
            if not self.base_url.startswith("https://"):
                raise ValueError("CORRAL_BASE_URL must use https:// when CORRAL_ENV=production")
        if self.secret_key is not None and (
            self.secret_key.strip().lower() in PLACEHOLDER_SECRETS or len(self.secret_key) < MIN_SECRET_LENGTH
        ):
            raise ValueError(
                f"CORRAL_SECRET_KEY must be a random value of at least {MIN_SECRET_LENGTH} characters "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        return self

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://") or self.tls

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in self.trusted_proxies]

    def resolved_secret_key(self) -> str:
        """The secret key; in development, generated once and stored (0600) in the data directory."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
