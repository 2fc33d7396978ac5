"""Default cryptoperiods by key type, from NIST SP 800-57 Part 1 Rev. 5, Table 1 (data/controls.yaml).

Periods count in days from activation: the originator-usage period (OUP: may encrypt, sign, mac)
and the recipient-usage period (RUP: may still decrypt and verify), which for symmetric keys runs
up to three years past the end of the OUP. A policy may set shorter (or longer) periods.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hsm.base import USAGE_ENCRYPT_DECRYPT, USAGE_MAC, USAGE_SIGN_VERIFY, USAGE_WRAP_UNWRAP

DAYS_PER_MONTH = 365 / 12


@dataclass(frozen=True)
class Cryptoperiod:
    key_type: str  # the Table 1 id in controls.yaml
    originator_days: int
    recipient_days: int


def _months(months: int) -> int:
    return round(months * DAYS_PER_MONTH)


# (algorithm family, usage) -> Table 1 row. OUPs are Table 1's upper bounds; RUP = OUP + 3 years for
# symmetric keys (the table's "<= OUP + 3 years"); public signature-verification keys keep verifying
# for three years after the private key stops signing ("several years").
DEFAULTS: dict[tuple[str, str], Cryptoperiod] = {
    ("aes", USAGE_ENCRYPT_DECRYPT): Cryptoperiod("symmetric_data_encryption", _months(24), _months(24 + 36)),
    ("aes", USAGE_WRAP_UNWRAP): Cryptoperiod("symmetric_key_wrapping", _months(24), _months(24 + 36)),
    ("hmac", USAGE_MAC): Cryptoperiod("symmetric_authentication", _months(24), _months(24 + 36)),
    ("rsa", USAGE_SIGN_VERIFY): Cryptoperiod("private_signature", _months(36), _months(36 + 36)),
    ("ec", USAGE_SIGN_VERIFY): Cryptoperiod("private_signature", _months(36), _months(36 + 36)),
    ("rsa", USAGE_WRAP_UNWRAP): Cryptoperiod("private_key_transport", _months(24), _months(24)),
}


def default_for(family: str, usage: str) -> Cryptoperiod:
    try:
        return DEFAULTS[(family, usage)]
    except KeyError:
        return Cryptoperiod("unknown", _months(12), _months(12))
