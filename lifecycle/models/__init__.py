from __future__ import annotations

from .backups import (
    Backup,
    CeremonyState,
    EscrowCeremony,
    EscrowShare,
    Export,
    Restore,
    RestoreShare,
    RestoreState,
)
from .hsms import Hsm
from .jobs import Job, JobKind, JobStatus
from .keys import DestructionCertificate, Key, KeyGrant, KeyTransition, KeyUsage, KeyVersion
from .policies import BackupRule, Policy, PolicyVersion

__all__ = [
    "Backup",
    "BackupRule",
    "CeremonyState",
    "DestructionCertificate",
    "EscrowCeremony",
    "EscrowShare",
    "Export",
    "Hsm",
    "Job",
    "JobKind",
    "JobStatus",
    "Key",
    "KeyGrant",
    "KeyTransition",
    "KeyUsage",
    "KeyVersion",
    "Policy",
    "PolicyVersion",
    "Restore",
    "RestoreShare",
    "RestoreState",
]
