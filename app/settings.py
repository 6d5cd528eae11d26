"""Studio settings, read once from environment variables (pydantic-settings).

Every variable is documented in the README; an invalid value stops the program at
start with a message that names the variable (`load_settings`).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """An environment variable holds a value the studio cannot use."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=True)

    DATA_DIR: Path = Field(Path("data"), description="Folder for the SQLite database, the embedded broker and media.")
    DATABASE_URL: str = Field("", description="SQLAlchemy URL; empty means sqlite:///DATA_DIR/studio.db.")
    REDIS_URL: str = Field("", description="Celery broker, e.g. redis://127.0.0.1:6379/0; empty means the embedded broker.")
    SAM3_MODEL: str = Field("facebook/sam3", description="Hub id or local folder of the SAM3 weights.")
    STUDIO_USERS: str = Field("", description="Optional login: 'alice:secret,bob:other'; empty means no login.")
    HOST: str = Field("127.0.0.1", description="Address the web app binds to.")
    PORT: int = Field(7860, ge=1, le=65535, description="Port the web app listens on.")
    MAX_UPLOAD_MB: int = Field(200, ge=1, le=100_000, description="Largest accepted upload, per file, in MiB.")
    MAX_ZIP_MEMBERS: int = Field(10_000, ge=1, le=10_000_000,
                                 description="Most files one uploaded zip may hold; a bigger zip is refused unread.")

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
