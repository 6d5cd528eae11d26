"""Studio and worker settings, read once from environment variables (pydantic-settings).

The only place in app/ and worker/ that reads the environment. Every variable is
documented in the README; an invalid value stops the program at start with a message
that names the variable (`load_settings`).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sam3_lora.hub_ids import is_hub_id


class SettingsError(ValueError):
    """An environment variable holds a value the studio cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=True)

    DATA_DIR: Path = Field(Path("data"), description="Folder for the SQLite database, the embedded broker and media.")
    DATABASE_URL: str = Field("", description="SQLAlchemy URL; empty means sqlite:///DATA_DIR/studio.db.")
    REDIS_URL: str = Field("", description="Celery broker, e.g. redis://127.0.0.1:6379/0; empty means the embedded broker.")
    SAM3_MODEL: str = Field("facebook/sam3", description="Hub id or local folder of the SAM3 weights.")
    SAM3_BASE_MODEL: str = Field("", description="Hub id the SAM3_MODEL folder came from (e.g. facebook/sam3), named "
                                 "by model cards and pushed adapters; empty when SAM3_MODEL is the hub id.")
    LABEL_STUDIO_URL: str = Field("", description="Label Studio's address (e.g. http://label-studio:8080): the "
                                  "Label Studio ML backend fetches task images from there, and from nowhere else.")
    LABEL_STUDIO_API_KEY: str = Field("", description="Label Studio access token the ML backend sends when it "
                                      "fetches task images (Authorization: Token ...).")
    STUDIO_USERS: str = Field("", description="Optional login: 'alice:secret,bob:other'; empty means no login.")
    HOST: str = Field("127.0.0.1", description="Address the web app binds to.")
    PORT: int = Field(7860, ge=1, le=65535, description="Port the web app listens on.")
    MAX_UPLOAD_MB: int = Field(200, ge=1, le=100_000, description="Largest accepted upload, per file, in MiB.")
    MAX_ZIP_MEMBERS: int = Field(10_000, ge=1, le=10_000_000,
                                 description="Most files one uploaded zip may hold; a bigger zip is refused unread.")
    # Worker tuning (tests lower them). A training worker beats every step and during
    # evaluation and checkpoint saves; 5 min without one is far beyond a slow step.
    JOB_STALE_AFTER_S: float = Field(5 * 60, gt=0, description="A running job whose heartbeat is older is "
                                     "re-queued by the sweeps (studio and worker start) and resumes from its checkpoint.")
    # Redis re-delivers an unacknowledged message after the visibility timeout; with
    # acks_late a run longer than it gets a second copy (celery #5935). Longer than any
    # run, so that only a lost worker causes one; claim_job makes a second copy harmless.
    CELERY_VISIBILITY_TIMEOUT_S: float = Field(24 * 3600, gt=0, description="Redis re-delivers an "
                                               "unacknowledged task after this many seconds.")
    CELERY_EXTRA_TASK_MODULES: str = Field("", description="Comma-separated task modules a worker imports "
                                           "besides worker.tasks (tests add theirs).")
    RANK: int = Field(0, ge=0, description="Set by torchrun in each process of a multi-GPU job; rank 0 exports "
                      "the data and writes the rows and files.")
    WORKER_PARENT_PID: int = Field(0, ge=0, description="Set by sam3-studio on the worker it starts: the worker "
                                   "shuts down once that process is gone. 0: not watched.")
    # Login throttle (app/login_throttle.py): after LOGIN_FREE_FAILURES failed logins in a row
    # for one user or from one address, logins for it are refused (429) for LOGIN_BACKOFF_S,
    # doubling with each further failure up to LOGIN_BACKOFF_MAX_S.
    LOGIN_FREE_FAILURES: int = Field(5, ge=1, le=1000, description="Failed logins in a row (per user, per "
                                     "address) before logins are refused for a while.")
    LOGIN_BACKOFF_S: float = Field(30, gt=0, description="First refusal period after too many failed logins, "
                                   "in seconds; doubles with every further failure.")
    LOGIN_BACKOFF_MAX_S: float = Field(15 * 60, gt=0, description="Longest refusal period, in seconds.")
    SECURE_COOKIES: bool = Field(False, description="Mark the login cookies Secure on every response; without "
                                 "it they are Secure exactly when the request came over HTTPS.")

    @field_validator("JOB_STALE_AFTER_S", "CELERY_VISIBILITY_TIMEOUT_S", "LOGIN_BACKOFF_S", "LOGIN_BACKOFF_MAX_S",
                     mode="before")
    @classmethod
    def _empty_seconds_is_default(cls, value, info: ValidationInfo):
        """`JOB_STALE_AFTER_S=` (set but empty) means the default, as for the string settings."""
        return cls.model_fields[info.field_name].default if value == "" else value

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url_has_scheme(cls, value: str) -> str:
        if value and "://" not in value:
            raise ValueError("expected an SQLAlchemy URL such as sqlite:///path/studio.db or postgresql+psycopg://user@host/db")
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://host:port/db (or rediss://, unix://)")
        return value

    @field_validator("SAM3_BASE_MODEL")
    @classmethod
    def _base_model_is_hub_id(cls, value: str) -> str:
        if value and not is_hub_id(value):
            raise ValueError("expected a Hub id such as facebook/sam3, not a path")
        return value

    @field_validator("LABEL_STUDIO_URL")
    @classmethod
    def _label_studio_url_scheme(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("expected http://host:port or https://host")
        return value.rstrip("/")

    @field_validator("STUDIO_USERS")
    @classmethod
    def _users_are_pairs(cls, value: str) -> str:
        parse_users(value)
        return value

    @property
    def database_url(self) -> str:
        return self.DATABASE_URL or f"sqlite:///{(self.DATA_DIR / 'studio.db').resolve()}"

    @property
    def media_dir(self) -> Path:
        return self.DATA_DIR / "media"

    @property
    def broker_url(self) -> str:
        """Redis when configured, else kombu's SQLAlchemy transport on a SQLite file in DATA_DIR."""
        return self.REDIS_URL or f"sqla+sqlite:///{(self.DATA_DIR / 'broker.db').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return not self.REDIS_URL

    @property
    def users(self) -> dict[str, str]:
        return parse_users(self.STUDIO_USERS)

    @property
    def max_upload_bytes(self) -> int:
        return self.MAX_UPLOAD_MB * 1024 * 1024

    @property
    def celery_extra_task_modules(self) -> list[str]:
        return [name.strip() for name in self.CELERY_EXTRA_TASK_MODULES.split(",") if name.strip()]


def parse_users(value: str) -> dict[str, str]:
    """'alice:secret,bob:other' -> {'alice': 'secret', 'bob': 'other'}."""
    users: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, password = item.partition(":")
        if not sep or not name or not password:
            raise ValueError(f"entry {item.split(':')[0]!r} must be user:password")
        users[name] = password
    return users


def load_settings() -> Settings:
    """Read the environment; raise SettingsError naming each bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise SettingsError(f"invalid environment: {problems}") from None
