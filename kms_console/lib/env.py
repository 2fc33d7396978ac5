"""Small helpers that read settings from the environment and fail loudly on bad values."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

TRUE_VALUES = {"1", "true", "yes", "on"}
FALSE_VALUES = {"0", "false", "no", "off", ""}


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), not {raw!r}")


def envint(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}")
    return value


def envlist(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def envsecret(name: str, default_file: Path | None = None, *, generate: bool = False) -> str | None:
    """Read a secret from NAME, else from the file named by NAME_FILE, else from default_file.

    With generate=True a missing default_file is created (mode 0600) holding a fresh random value,
    so a first local run needs no configuration. The secret's value never appears in an error text.
    """
    value = os.environ.get(name)
    if value:
        return value
    file_name = os.environ.get(f"{name}_FILE")
    path = Path(file_name) if file_name else default_file
    if path is None:
        return None
    if not path.exists():
        if file_name or not generate:
            if file_name:
                raise ImproperlyConfigured(f"{name}_FILE names {path}, which does not exist")
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    secret = path.read_text().strip()
    if not secret:
        raise ImproperlyConfigured(f"the secret file {path} for {name} is empty")
    return secret


def parse_database_url(url: str, base_dir: Path) -> dict:
    """Turn DATABASE_URL (sqlite:///path or postgres://user:pass@host:port/name) into a DATABASES entry."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        raw_path = unquote(parts.path)
        # sqlite:///relative/path and sqlite:////absolute/path, as dj-database-url reads them.
        path = raw_path[1:] if raw_path.startswith("/") else raw_path
        if not path:
            raise ImproperlyConfigured("DATABASE_URL for SQLite needs a file path (sqlite:///var/kms.sqlite3)")
        db_path = Path(path) if Path(path).is_absolute() else base_dir / path
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(db_path),
            # IMMEDIATE makes writers take the lock at BEGIN, so concurrent writers queue up instead of
            # failing with "database is locked" when a read transaction upgrades to a write.
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30},
        }
    if scheme in {"postgres", "postgresql", "pgsql"}:
        query = parse_qs(parts.query)
        options = {key: values[-1] for key, values in query.items()}
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured("DATABASE_URL for PostgreSQL needs a database name")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": options,
            "CONN_MAX_AGE": 0,
        }
    raise ImproperlyConfigured(f"DATABASE_URL scheme {scheme!r} is not supported (use sqlite or postgres)")
