"""Who is acting and from where: set once per request, task or command; read by `audit.services.record`."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ActorContext:
    user: Any = None  # a User, or None for the system
    via: str = "system"  # web, api, cli, worker, beat, system
    source: str = ""  # client address for web/api, host name or "" otherwise
    scoped: bool = False  # inside an `acting` block (a request, task or command)


# ActorContext is a frozen dataclass, so sharing the default instance is safe.
_current: contextvars.ContextVar[ActorContext] = contextvars.ContextVar("audit_actor", default=ActorContext())  # noqa: B039


def current() -> ActorContext:
    return _current.get()


@contextlib.contextmanager
def acting(user: Any = None, *, via: str, source: str = "") -> Iterator[ActorContext]:
    token = _current.set(ActorContext(user=user, via=via, source=source, scoped=True))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def set_user(user: Any) -> None:
    """The request's user became known (after authentication): keep via and source.

    Only inside an `acting` block, which undoes it when the request ends. Outside one (code that
    authenticates without a request around it) there is nothing to attribute, and setting the
    user would stick to the thread for good, crediting later system work to that user.
    """
    ctx = _current.get()
    if not ctx.scoped:
        return
    _current.set(ActorContext(user=user, via=ctx.via, source=ctx.source, scoped=True))
