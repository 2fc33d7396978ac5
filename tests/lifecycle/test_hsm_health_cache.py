"""A token's health walks every object under the HSM lock: pages and API reads reuse it for 30 s."""

from __future__ import annotations

from typing import Any

from lifecycle.hsm import Pkcs11Backend
from lifecycle.models import Hsm


def test_health_is_computed_once_per_half_minute(kms: Any, monkeypatch: Any) -> None:
    import lifecycle.models.hsms as hsms

    hsms._health_cache.clear()
    calls = []
    real = Pkcs11Backend.health

    def counted(self: Pkcs11Backend) -> Any:
        calls.append(self.token_label)
        return real(self)

    monkeypatch.setattr(Pkcs11Backend, "health", counted)
    hsm = Hsm.objects.get(name="default")
    first = hsm.health()
    assert first.ok
    assert hsm.health() is first
    assert len(calls) == 1
    assert hsm.health(max_age=0).ok
    assert len(calls) == 2
