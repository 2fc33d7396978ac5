from __future__ import annotations

import threading
import time
import uuid

from django.db import models

from audit.locking import TrailOrderedManager
from lifecycle.hsm import HealthInfo, Pkcs11Backend, backend_for

HEALTH_MAX_AGE_SECONDS = 30.0
_health_lock = threading.Lock()
_health_cache: dict[uuid.UUID, tuple[float, HealthInfo]] = {}


class Hsm(models.Model):
    """A registered HSM token, reached through a PKCS#11 module and chosen by its label.

    The PIN is never stored: `pin_env` names the environment variable and `pin_file` the file the
    driver reads it from at login. Registration and retirement are dual-controlled (hsm_change).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=64, unique=True)
    module = models.CharField(max_length=500)
    token_label = models.CharField(max_length=32)
    pin_env = models.CharField(max_length=64, blank=True)
    pin_file = models.CharField(max_length=500, blank=True)
    is_default = models.BooleanField(default=False)
    location = models.CharField(max_length=200, blank=True)
    registered_at = models.DateTimeField()
    retired_at = models.DateTimeField(null=True, blank=True)

    objects = TrailOrderedManager()  # row locks take the audit chain head first

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["module", "token_label"], name="lifecycle_hsm_unique_token"),
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="lifecycle_hsm_one_default"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def health(self, *, max_age: float = HEALTH_MAX_AGE_SECONDS) -> HealthInfo:
        """The token's health, computed at most every `max_age` seconds per process: it walks every
        object on the token under the process-wide HSM lock, so pages and API reads must not make
        every request pay for it (nor stall key use behind it)."""
        now = time.monotonic()
        with _health_lock:
            cached = _health_cache.get(self.pk)
            if cached is not None and now - cached[0] < max_age:
                return cached[1]
        health = self.backend().health()
        with _health_lock:
            _health_cache[self.pk] = (now, health)
        return health

    def backend(self) -> Pkcs11Backend:
        return backend_for(
            module=self.module, token_label=self.token_label, pin_env=self.pin_env, pin_file=self.pin_file
        )
