"""Checks that ask the HSMs: inventory reconciliation, storage form, extractability, destruction.

Each HSM is asked once per assessment for its whole inventory (`Context.inventory`), which answers
"is this object there, is it sensitive, is it extractable" for every version at once; only key
check values need one call per version, and those are compared for a daily moving window
(`Context.kcv_window`). For a key pair the key check value is the public half's; the private half
proves, by signing a test message, that it belongs to the recorded public key (`_pair_proof`, one
HSM call per version in that window).

A restore into another HSM moves a version there and records the copy the old HSM keeps
(`VersionCopy`): such a copy is a warning; a copy of a live version that no record names is a
failure (destruction would not reach it).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

from django.apps import apps

from lifecycle.audit_signer import SIGNING_KEY_LABEL
from lifecycle.hsm import HsmDataError, HsmError, ObjectInfo
from lifecycle.models import BackupRule, Key, KeyVersion, VersionCopy
from lifecycle.states import KeyState

from ..links import hsm_url, key_url
from .base import WARN, Check, CheckResult, Context, HsmInventory, Offender, result

# A destruction the sweep should have started by now (failed jobs are retried every hour).
DESTRUCTION_GRACE = dt.timedelta(days=1)
SECRET_CLASSES = frozenset({"secret_key", "private_key"})


def infrastructure_labels() -> frozenset[str]:
    """Labels of the console's own HSM objects that are not key versions (signing, envelope, import keys)."""
    labels = {SIGNING_KEY_LABEL}
    try:
        from lifecycle.backups import hsm_ops
    except ImportError:  # an installation without the backup package
        pass
    else:
        labels |= {
            getattr(hsm_ops, "ENVELOPE_LABEL", "kms-share-envelope"),
            getattr(hsm_ops, "IMPORT_KEY_LABEL", "kms-import-key"),
            "kms-restore-kek",  # a session object that lives for one restore call
        }
    return frozenset(labels) | frozenset(Context.setting("KMS_COMPLIANCE_INFRASTRUCTURE_LABELS", ()))


def _version_label(version: KeyVersion) -> str:
    return f"{version.key.name} v{version.number}"


def _needed_classes(version: KeyVersion) -> set[str]:
    return {"private_key", "public_key"} if version.key.is_asymmetric else {"secret_key"}


def _destroyed_versions(ctx: Context) -> list[KeyVersion]:
    return ctx.cached(
        "hsm.destroyed_versions",
        lambda: list(KeyVersion.objects.filter(state=KeyState.DESTROYED).select_related("key", "hsm")),
    )


def _recorded_copies(ctx: Context) -> set[tuple[Any, str]]:
    """(HSM id, CKA_ID) of every live recorded copy of a version on an HSM other than its own."""
    return ctx.cached(
        "hsm.recorded_copies",
        lambda: set(VersionCopy.objects.filter(ended_at__isnull=True).values_list("hsm_id", "version__cka_id")),
    )


def _pair_proof(ctx: Context, version: KeyVersion) -> str | HsmError:
    """The private key of a pair signs a test message that the recorded public key verifies (once per
    version per assessment). Returns the public key's KCV, or the HSM's error (HsmDataError: another key)."""

    def prove() -> str | HsmError:
        try:
            return version.hsm.backend().prove_key_pair(
                version.cka_id_bytes, version.key.algorithm, version.public_key_pem
            )
        except HsmError as exc:
            return exc

    return ctx.cached(f"hsm.pair_proof.{version.cka_id}", prove)


def _unreadable(inventory: HsmInventory) -> Offender:
    return Offender("hsm", inventory.hsm.name, f"could not be read: {inventory.error}", hsm_url(inventory.hsm.pk))


def _secret_objects(inventory: HsmInventory, version: KeyVersion) -> list[ObjectInfo]:
    return [o for o in inventory.objects.get(version.cka_id, []) if o.object_class in SECRET_CLASSES]


# --- Inventory reconciliation ---------------------------------------------------------------------


def hsm_inventory(ctx: Context) -> CheckResult:
    versions = [v for v in ctx.live_versions() if v.generated_at is not None]
    pending = {v.cka_id for v in ctx.live_versions() if v.generated_at is None}
    live_by_id = {v.cka_id: v for v in ctx.live_versions()}
    destroyed = {v.cka_id: v for v in _destroyed_versions(ctx)}
    labels = infrastructure_labels()
    by_hsm: dict[Any, list[KeyVersion]] = defaultdict(list)
    for version in versions:
        by_hsm[version.hsm_id].append(version)
    offenders: list[Offender] = []
    found = unknown = copies = infrastructure = compared = mismatched = 0
    asked = 0
    for hsm in ctx.hsms():
        if hsm.retired_at is not None and not by_hsm[hsm.pk]:
            continue  # retired and holding nothing the console knows of: not asked
        asked += 1
        inventory = ctx.inventory(hsm)
        if not inventory.ok:
            offenders.append(_unreadable(inventory))
            continue
        present = []
        for version in by_hsm[hsm.pk]:
            classes = {o.object_class for o in inventory.objects.get(version.cka_id, [])}
            missing = _needed_classes(version) - classes
            if missing == _needed_classes(version):
                reason = f"recorded on HSM {hsm.name} (CKA_ID {version.cka_id}) but not found on the token"
                offenders.append(Offender("version", _version_label(version), reason, key_url(version.key_id)))
            elif missing:
                reason = f"the {' and '.join(sorted(missing)).replace('_', ' ')} is missing on HSM {hsm.name}"
                offenders.append(Offender("version", _version_label(version), reason, key_url(version.key_id)))
            else:
                found += 1
                present.append(version)
        mine = {v.cka_id for v in by_hsm[hsm.pk]} | pending
        for cka_id, objects in sorted(inventory.objects.items()):
            if cka_id in mine:
                continue
            if any(o.label in labels for o in objects):
                infrastructure += 1
                continue
            kinds = ", ".join(sorted({o.object_class.replace("_", " ") for o in objects}))
            label = objects[0].label or f"CKA_ID {cka_id[:16]}"
            if cka_id in live_by_id and cka_id not in destroyed:
                other = live_by_id[cka_id]
                reason = f"a copy of {_version_label(other)}, which the console records on HSM {other.hsm.name}"
                if (hsm.pk, cka_id) in _recorded_copies(ctx):
                    # Left behind by a restore into another HSM and recorded with it, so destruction
                    # reaches it: a known copy, a warning, not an unknown object.
                    copies += 1
                    offenders.append(
                        Offender("hsm_object", f"{hsm.name}: {label}", reason, key_url(other.key_id), severity=WARN)
                    )
                else:
                    unknown += 1
                    reason += ", but not recorded as a copy (destroying the version would not reach it)"
                    offenders.append(Offender("hsm_object", f"{hsm.name}: {label}", reason, key_url(other.key_id)))
                continue
            unknown += 1
            if cka_id in destroyed:
                gone = destroyed[cka_id]
                reason = f"belongs to {_version_label(gone)}, destroyed in the console, but is still on the token"
                offenders.append(Offender("hsm_object", f"{hsm.name}: {label}", reason, key_url(gone.key_id)))
            else:
                reason = f"{kinds} with CKA_ID {cka_id} that the console does not know"
                offenders.append(Offender("hsm_object", f"{hsm.name}: {label}", reason, hsm_url(hsm.pk)))
        for version in ctx.kcv_window(present):
            compared += 1
            kcv = ctx.key_check_value(version)
            if isinstance(kcv, HsmError):
                reason = f"the HSM could not compute its key check value: {kcv.message}"
                offenders.append(Offender("version", _version_label(version), reason, key_url(version.key_id)))
            elif kcv != version.kcv:
                mismatched += 1
                reason = (
                    f"the HSM computes key check value {kcv[:16]}, the console recorded {version.kcv[:16] or 'none'} "
                    "(a substituted or altered key)"
                )
                offenders.append(Offender("version", _version_label(version), reason, key_url(version.key_id)))
            elif version.key.is_asymmetric and version.public_key_pem:
                # The public half's KCV says nothing of the private half beside it: make it prove itself.
                proof = _pair_proof(ctx, version)
                if isinstance(proof, HsmDataError) or (isinstance(proof, str) and proof != version.kcv):
                    mismatched += 1
                    reason = (
                        "its private key does not belong to the recorded public key (a substituted private key): "
                        f"{proof.message if isinstance(proof, HsmError) else 'another public key'}"
                    )
                    offenders.append(Offender("version", _version_label(version), reason, key_url(version.key_id)))
                elif isinstance(proof, HsmError):
                    reason = f"the HSM could not prove its private key belongs to its public key: {proof.message}"
                    offenders.append(Offender("version", _version_label(version), reason, key_url(version.key_id)))
    figure = (
        f"{found} of {len(versions)} key versions found on {asked} HSM{'s' if asked != 1 else ''}; "
        f"{unknown} unknown object{'s' if unknown != 1 else ''}; key check values compared for {compared}, "
        f"{mismatched} mismatch{'es' if mismatched != 1 else ''}"
    )
    if copies:
        figure += f"; {copies} cop{'ies' if copies != 1 else 'y'} of versions the console records on another HSM"
    notes = [f"{infrastructure} object(s) of the console itself (labels: {', '.join(sorted(labels))})"]
    if compared < found:
        notes.append(
            f"Key check values are compared for a window of {ctx.kcv_sample} versions that moves every day; "
            "the nightly snapshot compares all of them."
        )
    return result("hsm_inventory", figure, offenders, applicable=asked > 0, notes=notes)


# --- Storage form ---------------------------------------------------------------------------------


def hsm_storage(ctx: Context) -> CheckResult:
    versions = [v for v in ctx.live_versions() if v.generated_at is not None]
    offenders: list[Offender] = []
    unreadable = set()
    ok = 0
    for version in versions:
        inventory = ctx.inventory(version.hsm)
        if not inventory.ok:
            if version.hsm_id not in unreadable:
                unreadable.add(version.hsm_id)
                offenders.append(_unreadable(inventory))
            continue
        secrets = _secret_objects(inventory, version)
        url = key_url(version.key_id)
        if not secrets:
            reason = f"no secret or private key object on HSM {version.hsm.name}: where is the key?"
            offenders.append(Offender("version", _version_label(version), reason, url))
        elif any(o.sensitive is not True for o in secrets):
            reason = "its HSM object is not marked sensitive (CKA_SENSITIVE), so its value could be read out"
            offenders.append(Offender("version", _version_label(version), reason, url))
        else:
            ok += 1
            if version.hsm.retired_at is not None:
                reason = f"lives on HSM {version.hsm.name}, retired on {version.hsm.retired_at:%Y-%m-%d}"
                offenders.append(Offender("version", _version_label(version), reason, url, severity=WARN))
    figure = f"{ok} of {len(versions)} live key versions are sensitive objects inside their HSM"
    return result("hsm_storage", figure, offenders, applicable=bool(versions))


def _may_be_extractable(policy: Any) -> bool:
    """What lifecycle creates: extractable (wrappable, never readable) where backup or export may need it."""
    return policy.backup != BackupRule.FORBIDDEN or policy.exportable


def extractable(ctx: Context) -> CheckResult:
    versions = [v for v in ctx.live_versions() if v.generated_at is not None]
    policies = ctx.policies()
    offenders: list[Offender] = []
    count = 0
    for version in versions:
        policy = policies.get(version.key.policy_id)
        url = key_url(version.key_id)
        hsm_says = None
        inventory = ctx.inventory(version.hsm)
        if inventory.ok:
            flags = {o.extractable for o in _secret_objects(inventory, version)}
            hsm_says = True if True in flags else (False if flags == {False} else None)
        is_extractable = bool(version.extractable or hsm_says)
        count += is_extractable
        if hsm_says and not version.extractable:
            reason = "the HSM object is extractable although the console created it non-extractable"
            offenders.append(Offender("version", _version_label(version), reason, url))
        elif is_extractable and policy is not None and not _may_be_extractable(policy):
            reason = f"extractable, but policy {policy.ref} forbids both backup and export"
            offenders.append(Offender("version", _version_label(version), reason, url))
    figure = (
        f"{count} of {len(versions)} live key versions are extractable (wrappable, never readable), "
        f"{count - len(offenders)} of them under a policy that allows backup or export"
    )
    return result("extractable", figure, offenders, applicable=bool(versions))


# --- Destruction ----------------------------------------------------------------------------------


def destruction(ctx: Context) -> CheckResult:
    keys = list(Key.objects.filter(state=KeyState.DESTROYED).select_related("destruction_certificate"))
    versions = _destroyed_versions(ctx)
    offenders: list[Offender] = []
    troubled: set[Any] = set()
    for key in keys:
        if getattr(key, "destruction_certificate", None) is None:
            offenders.append(
                Offender("key", key.name, "destroyed without a certificate of destruction", key_url(key.pk))
            )
            troubled.add(key.pk)
    unreadable = set()
    hsms = {hsm.pk: hsm for hsm in ctx.hsms()}
    # A destroyed version is looked for on its HSM and on every HSM that was recorded holding a copy.
    copy_hsms: dict[Any, set[Any]] = defaultdict(set)
    copy_rows = (
        VersionCopy.objects.filter(version__state=KeyState.DESTROYED) if versions else VersionCopy.objects.none()
    )
    for version_id, hsm_id in copy_rows.values_list("version_id", "hsm_id"):
        copy_hsms[version_id].add(hsm_id)
    for version in versions:
        for hsm in [version.hsm, *(hsms[pk] for pk in sorted(copy_hsms[version.pk] - {version.hsm_id}, key=str))]:
            if hsm.retired_at is not None:
                # Retired: an HSM is retired only once nothing of the console lives there (its
                # versions destroyed, their absence confirmed); it may be gone, so it is not asked.
                continue
            inventory = ctx.inventory(hsm)
            if not inventory.ok:
                if hsm.pk not in unreadable:
                    unreadable.add(hsm.pk)
                    offenders.append(_unreadable(inventory))
                troubled.add(version.key_id)
            elif version.cka_id in inventory.objects:
                when = f" on {version.destroyed_at:%Y-%m-%d}" if version.destroyed_at else ""
                where = "" if hsm.pk == version.hsm_id else " (a copy a restore left there)"
                reason = f"destroyed{when}, but its object is still on HSM {hsm.name}{where}"
                offenders.append(Offender("version", _version_label(version), reason, key_url(version.key_id)))
                troubled.add(version.key_id)
    backup_model = _backup_model()
    if backup_model is not None:
        surviving = backup_model.objects.filter(version__state=KeyState.DESTROYED, destroyed_at__isnull=True)
        for backup in surviving.select_related("version__key"):
            version = backup.version
            reason = f"backup {str(backup.pk)[:8]} of this destroyed version still exists"
            offenders.append(Offender("backup", _version_label(version), reason, key_url(version.key_id)))
            troubled.add(version.key_id)
    backlog = Key.objects.filter(destroy_after__lt=ctx.now - DESTRUCTION_GRACE).exclude(state=KeyState.DESTROYED)
    for key in backlog.only("id", "name", "destroy_after"):
        reason = f"due for destruction since {key.destroy_after:%Y-%m-%d} and not destroyed yet"
        offenders.append(Offender("key", key.name, reason, key_url(key.pk), severity=WARN))
    ok = sum(1 for key in keys if key.pk not in troubled)
    figure = (
        f"{ok} of {len(keys)} destroyed keys certified, with no surviving HSM object "
        f"or backup ({len(versions)} destroyed versions checked)"
    )
    return result("destruction", figure, offenders, applicable=bool(keys or versions))


def _backup_model() -> Any:
    try:
        return apps.get_model("lifecycle", "Backup")
    except LookupError:
        return None


CHECKS = (
    Check(
        "hsm_inventory",
        "HSM inventory reconciles with the console",
        "Each registered HSM is asked for every object it holds. Every key version the console records is there "
        "(both halves of a key pair), nothing is there that the console does not know (besides its own audit "
        "signing, envelope and import keys), and the key check value the HSM computes for a version matches the "
        "one recorded when it was made: a mismatch means the key was substituted (a key pair's private half also "
        "proves, by signing, that it belongs to the recorded public key). A copy that an HSM still holds after the "
        "version was restored into another HSM is a warning when the restore recorded it (destruction reaches it) "
        "and a failure when nothing records it.",
        hsm_inventory,
        uses_hsm=True,
    ),
    Check(
        "hsm_storage",
        "No key stored outside an HSM",
        "Every live key version exists as a secret or private key object inside the HSM the console records for "
        "it, marked sensitive (its value cannot be read out). The database holds only identifiers, key check "
        "values and public keys. Versions on a retired HSM are a warning.",
        hsm_storage,
        uses_hsm=True,
    ),
    Check(
        "extractable",
        "Extractable keys only where policy allows",
        "A key version may be extractable (wrappable under another key, never readable) only when its policy "
        "allows backup or export, and the HSM object's CKA_EXTRACTABLE flag agrees with what the console recorded.",
        extractable,
        uses_hsm=True,
    ),
    Check(
        "destruction",
        "Destroyed keys are gone for good",
        "Every destroyed key has a certificate of destruction; no object of a destroyed version is still on its "
        "HSM (or on an HSM that held a copy of it); no backup of a destroyed version survives. Keys whose destruction date passed more than a day ago "
        "without being destroyed are a warning.",
        destruction,
        uses_hsm=True,
    ),
)
