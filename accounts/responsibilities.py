"""The key custodian responsibilities text (PCI DSS 4.0.1 Req. 3.7.8).

Changing the text means raising VERSION: every custodian must then acknowledge it again before they
can approve anything.
"""

from __future__ import annotations

import hashlib

VERSION = "2026.1"

TITLE = "Key custodian responsibilities"

TEXT = """\
As a key custodian of this key management console I acknowledge that:

1. I act as one of several people whose separate approvals are required (dual control) before
   sensitive key operations run. I approve only requests that I have read and understood, whose
   justification I find sufficient, and which match the digest shown to me.
2. I never approve a request I made myself, and I never let anyone else use my account, my
   password or my one-time-password device. I report a lost or compromised device at once.
3. If I hold a share of a recovery secret (split knowledge), I keep it secret and offline, never
   combine it with other custodians' shares outside an approved recovery ceremony, and return or
   destroy it when my role ends.
4. I report any suspected compromise or misuse of a key, an HSM or this console immediately, and I
   use the suspend and compromise actions when a key must stop being used.
5. I understand that every approval, rejection and action of mine is recorded in a tamper-evident
   audit trail, and that this acknowledgement must be renewed every twelve months and whenever
   this text changes.
"""

DIGEST = hashlib.sha256(TEXT.encode()).hexdigest()
