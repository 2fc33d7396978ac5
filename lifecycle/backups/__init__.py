"""Backup and recovery under split knowledge, and distribution of wrapped keys (SPEC §7, issue 9).

Each sensitive step is an approved request (`actions`) whose execution queues a Job; the job's `run`
does the HSM step outside any transaction and its `complete` applies the database effects under row
locks (`jobs`). The services, one module per entity, are what the actions, the job handlers, the
views, the API and beat call; each write happens in one transaction with its audit event:

- `escrow`: which key is the backup KEK, the escrow ceremony, the hand-off of shares, custody gaps;
- `backup`: which versions may be backed up, the backup record, restore tests (verification);
- `restore`: the share window, entering shares, recording or failing a restore;
- `distribution`: export for a recipient's RSA key, the HSM's import key;
- `destruction`: wiping the backups (and a KEK's escrow) of destroyed versions;
- `common`: small helpers; `shares`: Shamir splitting; `hsm_ops`: HSM steps on the driver's public calls;
  `selectors`: read-only queries.
"""

from __future__ import annotations
