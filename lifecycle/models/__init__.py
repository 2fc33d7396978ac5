from __future__ import annotations

from .backups import (
    Backup,
    CeremonyState,
    CopyEnd,
    EscrowCeremony,
    EscrowShare,
    Export,
    Restore,
    RestoreShare,
    RestoreState,
    VersionCopy,
)
from .hsms import Hsm
from .jobs import Job, JobKind, JobStatus
from .keys import DestructionCertificate, Key, KeyGrant, KeyTransition, KeyUsage, KeyVersion
from .policies import BackupRule, Policy, PolicyVersion

__all__ = [
    "Backup",
    "BackupRule",
    "CeremonyState",
    "CopyEnd",
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
    "VersionCopy",
]
