"""Destruction of a key's backups (a DESTRUCTION_HOOKS entry of lifecycle.services.steps).

Destroying a key or version wipes every backup blob of it and, for a backup KEK, its escrow (the
wrapped KEK and any share not yet handed off), and closes restores still collecting shares. What was
wiped is returned for the certificate of destruction.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.services import record

from ..hsm import HsmOperationError
from ..models import Backup, CeremonyState, EscrowCeremony, Key, KeyVersion, Restore, RestoreState
from .escrow import end_ceremony
from .restore import expire_restore


def destroy_backups(key: Key, versions: list[KeyVersion]) -> list[dict[str, Any]]:
    """DESTRUCTION_HOOKS entry: wipe every backup of these versions (and, for a KEK, its escrow).

    Idempotent: backups wiped by an earlier attempt are listed again, so the certificate always
    names them all. Raises HsmOperationError if a blob survived.
    """
    version_ids = [v.pk for v in versions]
    now = timezone.now()
    with transaction.atomic():
        for backup in Backup.objects.select_for_update().filter(version_id__in=version_ids, destroyed_at__isnull=True):
            backup.wrapped = ""
            backup.destroyed_at = now
            backup.save(update_fields=["wrapped", "destroyed_at"])
            record(
                "backup.destroyed",
                target_type="key",
                target_id=key.pk,
                details={"backup": str(backup.pk), "version": backup.version.number, "kcv": backup.kcv},
            )
        for ceremony in (
            EscrowCeremony.objects.select_for_update()
            .filter(kek_version_id__in=version_ids)
            .exclude(state__in=[CeremonyState.DESTROYED, CeremonyState.SUPERSEDED])
        ):
            end_ceremony(ceremony, CeremonyState.DESTROYED, now)
        for restore in Restore.objects.select_for_update().filter(
            backup__version_id__in=version_ids, state=RestoreState.COLLECTING
        ):
            expire_restore(restore, now)
    listed: list[dict[str, Any]] = []
    for backup in Backup.objects.filter(version_id__in=version_ids).select_related("version").order_by("created_at"):
        if backup.wrapped:
            raise HsmOperationError(f"backup {backup.pk} of version {backup.version.number} still holds its blob")
        listed.append(
            {
                "kind": "backup",
                "id": str(backup.pk),
                "version": backup.version.number,
                "kcv": backup.kcv,
                "kek_version": str(backup.kek_version_id),
                "created_at": backup.created_at.isoformat(),
                "destroyed_at": backup.destroyed_at.isoformat() if backup.destroyed_at else None,
                "wiped": True,
            }
        )
    for ceremony in EscrowCeremony.objects.filter(kek_version_id__in=version_ids).order_by("created_at"):
        if ceremony.wrapped_kek:
            raise HsmOperationError(f"escrow {ceremony.pk} still holds the wrapped KEK")
        listed.append(
            {
                "kind": "escrow",
                "id": str(ceremony.pk),
                "kek_version": str(ceremony.kek_version_id),
                "created_at": ceremony.created_at.isoformat(),
                "wiped": True,
            }
        )
    return listed
