"""Which catalog controls each evidence check serves: check id -> ["<framework name>:<control id>", ...].

Kept in code, next to the checks, because a mapping is a claim about what the check shows: change
it with the check. A control no check serves shows "not assessed automatically". A test holds this
mapping to the catalog file, so a renamed control cannot drop out silently.
"""

from __future__ import annotations

from collections import defaultdict

PCI = "PCI DSS 4.0.1"
HIPAA = "HIPAA"
SP800_53 = "NIST SP 800-53r5"
SP800_57 = "NIST SP 800-57"


def _ids(framework: str, *ids: str) -> list[str]:
    return [f"{framework}:{control_id}" for control_id in ids]


CHECK_CONTROLS: dict[str, list[str]] = {
    "cryptoperiod": [*_ids(PCI, "3.7.4", "3.7.5"), *_ids(SP800_53, "SC-12"), *_ids(SP800_57, "pt1r5-5.3")],
    "rotation": [*_ids(PCI, "3.7.4"), *_ids(SP800_53, "SC-12"), *_ids(SP800_57, "pt1r5-5.3")],
    "originator_period": [*_ids(PCI, "3.7.4", "3.7.5"), *_ids(SP800_57, "pt1r5-5.3", "pt1r5-7")],
    "key_strength": [
        *_ids(PCI, "3.7.1", "12.3.3"),
        *_ids(HIPAA, "164.312(a)(2)(iv)"),
        *_ids(SP800_53, "SC-12(2)", "SC-13"),
        *_ids(SP800_57, "pt1r5-5.6"),
    ],
    "transitions": [*_ids(SP800_57, "pt1r5-7")],
    "dual_control": [
        *_ids(PCI, "3.7.1", "3.7.6", "3.7.7"),
        *_ids(HIPAA, "164.308(a)(3)(ii)(A)", "164.312(c)(1)"),
        *_ids(SP800_53, "AC-3(2)", "AU-10", "CM-3(6)"),
    ],
    "policy_rules": [*_ids(PCI, "3.7.6"), *_ids(HIPAA, "164.312(c)(1)"), *_ids(SP800_53, "AC-3(2)")],
    "destruction_wait": [*_ids(PCI, "3.7.5"), *_ids(HIPAA, "164.312(c)(1)"), *_ids(SP800_57, "pt1r5-8.3.4")],
    "acknowledgements": [*_ids(PCI, "3.7.8"), *_ids(HIPAA, "164.308(a)(3)(ii)(A)")],
    "mfa": [
        *_ids(PCI, "8.4.1", "8.4.2", "8.4.3"),
        *_ids(HIPAA, "164.312(d)"),
        *_ids(SP800_53, "IA-2(1)", "IA-2(2)"),
    ],
    "separation_of_duties": [
        *_ids(PCI, "3.7.6", "7.2.2", "7.2.3"),
        *_ids(HIPAA, "164.308(a)(3)(ii)(A)"),
        *_ids(SP800_53, "AC-5", "AC-6"),
    ],
    "audit_chain": [
        # 10.2.1: a recent signed checkpoint shows the trail is being written and sealed now.
        *_ids(PCI, "10.2.1", "10.2.1.6", "10.3.2", "10.3.4"),
        *_ids(HIPAA, "164.312(b)"),
        *_ids(SP800_53, "AU-9", "AU-9(3)"),
    ],
    "audit_review": [
        *_ids(PCI, "10.2.1.4"),
        *_ids(HIPAA, "164.308(a)(1)(ii)(D)", "164.308(a)(5)(ii)(C)"),
        *_ids(SP800_53, "AU-6"),
    ],
    "hsm_inventory": [*_ids(PCI, "3.6.1.4", "3.7.7", "10.2.1.7"), *_ids(SP800_53, "SC-12", "CP-10")],
    "hsm_storage": [
        *_ids(PCI, "3.6.1", "3.6.1.2", "3.7.3"),
        *_ids(HIPAA, "164.312(a)(2)(iv)"),
        *_ids(SP800_53, "SC-12(2)", "SC-12(3)", "SC-28"),
    ],
    "extractable": [*_ids(PCI, "3.6.1", "3.6.1.2"), *_ids(SP800_53, "SC-12(3)")],
    "destruction": [
        *_ids(PCI, "3.7.5"),
        *_ids(HIPAA, "164.312(c)(1)"),
        *_ids(SP800_53, "MP-6"),
        *_ids(SP800_57, "pt1r5-8.2.2", "pt1r5-8.3.4"),
    ],
    "backups": [
        *_ids(HIPAA, "164.308(a)(7)(ii)(A)"),
        *_ids(SP800_53, "CP-9", "CP-10", "SC-12(1)"),
        *_ids(SP800_57, "pt1r5-8.2.2"),
    ],
}


def checks_by_control() -> dict[str, list[str]]:
    """ "<framework name>:<control id>" -> the ids of the checks that serve it, in check order."""
    serving: dict[str, list[str]] = defaultdict(list)
    for check_id, controls in CHECK_CONTROLS.items():
        for key in controls:
            serving[key].append(check_id)
    return dict(serving)


CONTROL_CHECKS = checks_by_control()


def control_key(framework_name: str, control_id: str) -> str:
    return f"{framework_name}:{control_id}"
