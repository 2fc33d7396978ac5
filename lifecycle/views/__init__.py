"""Console pages of the lifecycle: dashboard, keys, policies, custodians, HSMs and jobs.

Views read with plain queries (plus `lifecycle.selectors` and `approvals.selectors`) and change
nothing themselves: every change is a request opened through `approvals.services.open_request`,
which runs the registered action's checks and the dual-control rules. A refusal comes back as a
sentence next to the form field it concerns.

Who sees what: every console role (key_admin, custodian, security_officer, auditor) reads every
page; request forms are for the roles the operation's action names (key_admin for key steps,
security_officer for policies, roles and HSMs; custodians may also suspend or mark compromised).
"""

from __future__ import annotations

from .custodians import custodian_list, custodian_roles
from .dashboard import dashboard
from .hsms import hsm_list, hsm_register, hsm_retire, pin_sources
from .jobs import job_detail, job_list, job_status
from .keys import key_detail, key_generate, key_list, key_operation, version_rows
from .policies import policy_detail, policy_list, policy_propose

__all__ = [
    "custodian_list",
    "custodian_roles",
    "dashboard",
    "hsm_list",
    "hsm_register",
    "hsm_retire",
    "job_detail",
    "job_list",
    "job_status",
    "key_detail",
    "key_generate",
    "key_list",
    "key_operation",
    "pin_sources",
    "policy_detail",
    "policy_list",
    "policy_propose",
    "version_rows",
]
