"""Backups present where the policy requires them, recently verified, and absent where it forbids them.

Written against the interface of `lifecycle.models.Backup` (version, kcv, created_at, verified_at,
destroyed_at); an installation without that model reports the check as not applicable.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from lifecycle.hsm.base import USAGE_SIGN_VERIFY
from lifecycle.models import BackupRule
from lifecycle.states import KeyState

from ..links import key_url
from .base import WARN, Check, CheckResult, Context, Offender, result
from .hsm import _backup_model, _version_label

DEFAULT_VERIFY_DAYS = 30


def backups(ctx: Context) -> CheckResult:
    model = _backup_model()
    if model is None:
        return result("backups", "Backups are not part of this installation", [], applicable=False)
    max_age = dt.timedelta(days=ctx.setting("KMS_COMPLIANCE_BACKUP_VERIFY_DAYS", DEFAULT_VERIFY_DAYS))
    fields = {f.name for f in model._meta.get_fields()}
    wanted = ["version_id", "kcv", "created_at", "verified_at"] + (
        ["verify_failed_at"] if "verify_failed_at" in fields else []
    )
    live: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    rows = model.objects.filter(destroyed_at__isnull=True).exclude(version__state=KeyState.DESTROYED).values(*wanted)
    for row in rows:
        live[row["version_id"]].append(row)
    policies = ctx.policies()
    offenders: list[Offender] = []
    required = ok = 0
    for version in ctx.live_versions():
        if version.generated_at is None:
            continue
        policy = policies.get(version.key.policy_id)
        if policy is None:
            continue
        copies = live.get(version.pk, [])
        label, url = _version_label(version), key_url(version.key_id)
        if policy.backup == BackupRule.FORBIDDEN and copies:
            reason = f"{len(copies)} backup(s) exist though policy {policy.ref} forbids backups"
            offenders.append(Offender("version", label, reason, url))
            continue
        private_signing = version.key.is_asymmetric and version.key.usage == USAGE_SIGN_VERIFY
        if copies and private_signing and not getattr(policy, "backup_private_keys", False):
            reason = "a private signature key is backed up without its policy allowing it (NIST SP 800-57 8.2.2)"
            offenders.append(Offender("version", label, reason, url))
        for copy in copies:
            if copy["kcv"] != version.kcv:
                offenders.append(
                    Offender("version", label, "a backup's key check value differs from the version's", url)
                )
            failed = copy.get("verify_failed_at")
            if failed and (copy["verified_at"] is None or failed > copy["verified_at"]):
                reason = f"the last restore test of a backup failed on {failed:%Y-%m-%d}"
                offenders.append(Offender("version", label, reason, url))
        if policy.backup != BackupRule.REQUIRED:
            continue
        required += 1
        if not copies:
            reason = f"no backup although policy {policy.ref} requires one"
            offenders.append(Offender("version", label, reason, url))
            continue
        verified = max((c["verified_at"] for c in copies if c["verified_at"]), default=None)
        if verified is None:
            offenders.append(
                Offender("version", label, "its backup was never verified by a restore test", url, severity=WARN)
            )
        elif ctx.now - verified > max_age:
            reason = f"its backup was last verified on {verified:%Y-%m-%d}, more than {max_age.days} days ago"
            offenders.append(Offender("version", label, reason, url, severity=WARN))
        else:
            ok += 1
    figure = (
        f"{ok} of {required} key versions whose policy requires a backup have one "
        f"verified in the last {max_age.days} days"
    )
    return result("backups", figure, offenders, applicable=required > 0 or bool(live))


CHECKS = (
    Check(
        "backups",
        "Backups present, verified, and only where allowed",
        "Every live version of a key whose policy requires backup has a live backup whose key check value matches "
        "the version and whose last restore test succeeded within the verification period "
        "(KMS_COMPLIANCE_BACKUP_VERIFY_DAYS, 30 by default; never or not recently verified is a warning). No "
        "backup exists where the policy forbids backups, and private signature keys are backed up only where "
        "the policy explicitly allows it.",
        backups,
    ),
)
