"""What an hsm_change request may name: allowed PKCS#11 modules, KMS_…_PIN variables, PIN files in
the secrets directories — never SECRET_KEY, /etc/shadow or an arbitrary shared object."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from approvals.services import open_request
from kms_console.lib.errors import ApplicationError


def register(olivia: Any, **params: Any) -> Any:
    base = {
        "name": "dc2",
        "module": settings.KMS_PKCS11_MODULE,
        "token_label": "kms-test-other",
        "pin_env": "KMS_HSM2_PIN",
    }
    return open_request(
        operation="hsm_change", requester=olivia, justification="second site", parameters={**base, **params}
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"module": "/usr/lib/x86_64-linux-gnu/libc.so.6"}, "module"),
        ({"module": "/" + "a" * 300}, "module"),
        ({"pin_env": "SECRET_KEY"}, "pin_env"),
        ({"pin_env": "KMS_HSM_PIN_FILE"}, "pin_env"),
        ({"pin_env": "", "pin_file": "/etc/shadow"}, "pin_file"),
        ({"pin_env": "", "pin_file": "/run/secrets/../../etc/shadow"}, "pin_file"),
    ],
)
def test_a_registration_outside_the_allowed_modules_and_pin_sources_is_refused(
    olivia: Any, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApplicationError) as excinfo:
        register(olivia, **params)
    assert field in excinfo.value.details


def test_an_allowed_registration_opens_a_request(olivia: Any) -> None:
    assert register(olivia).state == "pending"
    assert register(olivia, name="dc3", pin_env="", pin_file="/run/secrets/hsm3_pin").state == "pending"
