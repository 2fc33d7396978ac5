"""Read-only queries of backups for pages, the API and the compliance checks."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from ..models import Backup, CeremonyState, EscrowCeremony, EscrowShare, Key, Restore, RestoreState
from ..models.backups import LIVE_CEREMONY_STATES


def backup_list() -> QuerySet[Backup]:
    """Backups newest first, with their versions, keys and KEKs (one query). Lists never show the
    wrapped blob, so it is not read."""
    return (
        Backup.objects.select_related("version__key", "kek_version__key").defer("wrapped").order_by("-created_at", "id")
    )


def backups_for_key(key: Key) -> QuerySet[Backup]:
    """Every backup of every version of the key (the key page lists them)."""
    return backup_list().filter(version__key=key)


def shares_waiting_for(user: Any) -> QuerySet[EscrowShare]:
    """Shares of live ceremonies that this user holds and has not taken yet, inside their deadline."""
    return (
        EscrowShare.objects.filter(holder=user, retrieved_at__isnull=True, ceremony__state__in=LIVE_CEREMONY_STATES)
        .filter(Q(ceremony__retrieve_by__isnull=True) | Q(ceremony__retrieve_by__gte=timezone.now()))
        .select_related("ceremony__kek_version__key")
        .order_by("ceremony__created_at", "index")
    )


def open_restores() -> QuerySet[Restore]:
    return (
        Restore.objects.filter(state__in=[RestoreState.COLLECTING, RestoreState.RESTORING])
        .select_related("backup__version__key", "target_hsm", "ceremony")
        .prefetch_related(Prefetch("entered_shares"))
        .order_by("collect_until")
    )


def newer_ceremonies(ceremony: EscrowCeremony) -> list[EscrowCeremony]:
    """Ceremonies of the same KEK made after `ceremony` that are still handing their shares off: each
    replaces it once every holder has taken their share."""
    return list(
        EscrowCeremony.objects.filter(
            kek_version__key_id=ceremony.kek_version.key_id,
            state=CeremonyState.DISTRIBUTING,
            created_at__gt=ceremony.created_at,
        ).order_by("-created_at")
    )


def restores_waiting_for(user: Any) -> list[Restore]:
    """Restores collecting shares, inside their window, for which this user holds a share of the
    restore's ceremony and has not entered it yet."""
    return list(
        Restore.objects.filter(
            state=RestoreState.COLLECTING, collect_until__gte=timezone.now(), ceremony__shares__holder=user
        )
        .exclude(entered_shares__custodian=user)
        .select_related("backup__version__key", "target_hsm")
        .order_by("collect_until")
        .distinct()
    )
