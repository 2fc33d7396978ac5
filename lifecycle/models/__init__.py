from __future__ import annotations

from .hsms import Hsm
from .jobs import Job, JobKind, JobStatus
from .keys import DestructionCertificate, Key, KeyGrant, KeyTransition, KeyUsage, KeyVersion
from .policies import BackupRule, Policy, PolicyVersion

__all__ = [
    "BackupRule",
    "DestructionCertificate",
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
]
