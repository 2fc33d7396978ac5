"""HSM drivers. `backend_for` hands out one driver object per token; sessions live in the driver."""

from __future__ import annotations

import threading

from django.conf import settings

from .base import (
    ALGORITHMS,
    Algorithm,
    GeneratedKey,
    HealthInfo,
    HsmAuthError,
    HsmBackend,
    HsmConfigError,
    HsmDataError,
    HsmError,
    HsmObjectNotFound,
    HsmOperationError,
    HsmTransientError,
    ObjectInfo,
    get_algorithm,
)
from .pkcs11 import Pkcs11Backend

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "GeneratedKey",
    "HealthInfo",
    "HsmAuthError",
    "HsmBackend",
    "HsmConfigError",
    "HsmDataError",
    "HsmError",
    "HsmObjectNotFound",
    "HsmOperationError",
    "HsmTransientError",
    "ObjectInfo",
    "Pkcs11Backend",
    "backend_for",
    "default_backend",
    "get_algorithm",
]

_backends: dict[tuple[str, str, str, str], Pkcs11Backend] = {}
_backends_lock = threading.Lock()


def backend_for(*, module: str, token_label: str, pin_env: str = "", pin_file: str = "") -> Pkcs11Backend:
    key = (module, token_label, pin_env, pin_file)
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            backend = Pkcs11Backend(
                module=module,
                token_label=token_label,
                pin_env=pin_env or None,
                pin_file=pin_file or None,
                softhsm2_conf=settings.KMS_SOFTHSM2_CONF,
            )
            _backends[key] = backend
        return backend


def default_backend() -> Pkcs11Backend:
    """The token this installation is configured with (KMS_PKCS11_MODULE, KMS_HSM_TOKEN_LABEL, PIN)."""
    return backend_for(
        module=settings.KMS_PKCS11_MODULE,
        token_label=settings.KMS_HSM_TOKEN_LABEL,
        pin_env=settings.KMS_HSM_PIN_ENV,
        pin_file=settings.KMS_HSM_PIN_FILE,
    )
