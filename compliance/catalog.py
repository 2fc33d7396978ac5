"""The control catalog: read data/controls.yaml (settings.KMS_CONTROLS_FILE) and bring the tables in line.

Used by `manage.py kms_compliance load-catalog` and by the data migration that gives a fresh
install its catalog. `sync_catalog` takes the model classes as arguments so that the migration can
pass its historical models.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from django.utils.text import slugify

from kms_console.lib.errors import ApplicationError

# URL and API names of the frameworks the shipped catalog holds; others get a slug of their name.
FRAMEWORK_SLUGS: dict[str, str] = {
    "PCI DSS 4.0.1": "pci-dss",
    "HIPAA": "hipaa",
    "NIST SP 800-53r5": "nist-800-53",
    "NIST SP 800-57": "nist-800-57",
}
REQUIRED_FIELDS = ("framework", "id", "title", "lifecycle_phases", "summary", "evidence")
LIFECYCLE_PHASES = (
    "planning",
    "generation",
    "distribution",
    "storage",
    "usage",
    "backup_and_recovery",
    "revocation",
    "rotation",
    "destruction",
)


class CatalogError(ApplicationError):
    code = "invalid_catalog"


@dataclass(frozen=True)
class CatalogEntry:
    framework: str
    control_id: str
    title: str
    short_title: str
    lifecycle_phases: list[str]
    summary: str
    evidence: list[str]
    applicability: str
    source: str
    related: list[str]


@dataclass(frozen=True)
class Catalog:
    frameworks: list[str]  # in the order the file first names them
    entries: list[CatalogEntry]
    sha256: str
    phases: tuple[str, ...]


@dataclass(frozen=True)
class SyncResult:
    frameworks: int
    controls: int
    created: int
    updated: int
    removed: int


def framework_slug(name: str) -> str:
    return FRAMEWORK_SLUGS.get(name) or slugify(name)[:32]


def _text(entry: dict[str, Any], field: str, where: str, *, required: bool = True) -> str:
    value = entry.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str | int | float) or not str(value).strip():
        raise CatalogError(f"{where}: '{field}' must be a non-empty text")
    return str(value).strip()


def _text_list(entry: dict[str, Any], field: str, where: str, *, required: bool = True) -> list[str]:
    value = entry.get(field)
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: '{field}' must be a list of texts")
    return [v.strip() for v in value]


def parse_catalog(text: str) -> Catalog:
    """Validate the YAML text of a catalog. Raises CatalogError naming the first bad entry."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"the catalog is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("controls"), list) or not data["controls"]:
        raise CatalogError("the catalog has no 'controls' list")
    vocabulary = data.get("lifecycle_phase_vocabulary") or list(LIFECYCLE_PHASES)
    if not isinstance(vocabulary, list) or not all(isinstance(p, str) for p in vocabulary):
        raise CatalogError("'lifecycle_phase_vocabulary' must be a list of phase names")
    frameworks: list[str] = []
    entries: list[CatalogEntry] = []
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(data["controls"], start=1):
        where = f"control #{index}"
        if not isinstance(raw, dict):
            raise CatalogError(f"{where} is not a mapping")
        missing = [field for field in REQUIRED_FIELDS if field not in raw]
        if missing:
            raise CatalogError(f"{where} lacks {', '.join(missing)}")
        framework = _text(raw, "framework", where)
        control_id = _text(raw, "id", where)
        where = f"control {framework} {control_id}"
        if len(framework) > 64 or len(control_id) > 64:
            raise CatalogError(f"{where}: framework names and control ids have at most 64 characters")
        if (framework, control_id) in seen:
            raise CatalogError(f"{where} appears twice")
        seen.add((framework, control_id))
        phases = _text_list(raw, "lifecycle_phases", where)
        unknown = sorted(set(phases) - set(vocabulary))
        if unknown:
            raise CatalogError(f"{where}: unknown lifecycle phase(s) {', '.join(unknown)}")
        if framework not in frameworks:
            frameworks.append(framework)
        entries.append(
            CatalogEntry(
                framework=framework,
                control_id=control_id,
                title=_text(raw, "title", where),
                short_title=_text(raw, "short_title", where, required=False)[:200],
                lifecycle_phases=phases,
                summary=_text(raw, "summary", where),
                evidence=_text_list(raw, "evidence", where),
                applicability=_text(raw, "applicability", where, required=False),
                source=_text(raw, "source", where, required=False)[:200],
                related=_text_list(raw, "related", where, required=False),
            )
        )
    slugs = [framework_slug(name) for name in frameworks]
    if len(set(slugs)) != len(slugs) or not all(slugs):
        raise CatalogError("two frameworks would share a URL name; rename one of them")
    return Catalog(
        frameworks=frameworks,
        entries=entries,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        phases=tuple(vocabulary),
    )


def read_catalog(path: Path | str) -> Catalog:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read the catalog {path}: {exc.strerror or exc}") from None
    return parse_catalog(text)


def sync_catalog(catalog: Catalog, framework_model: Any, control_model: Any) -> SyncResult:
    """Make the tables hold exactly the catalog: create, update, and remove what the file dropped.

    The caller runs this in a transaction (the command through `services.load_catalog`, or the
    migration). Controls carry no history of their own, so removing one loses nothing: snapshots
    keep their statuses by control id.
    """
    created = updated = removed = 0
    frameworks: dict[str, Any] = {}
    for position, name in enumerate(catalog.frameworks):
        framework, _ = framework_model.objects.update_or_create(
            name=name, defaults={"slug": framework_slug(name), "position": position}
        )
        frameworks[name] = framework
    wanted: dict[int, set[str]] = {fw.pk: set() for fw in frameworks.values()}
    existing = {(c.framework_id, c.control_id): c for c in control_model.objects.all()}
    fields = ("title", "short_title", "lifecycle_phases", "summary", "evidence", "applicability", "source", "related")
    for position, entry in enumerate(catalog.entries):
        framework = frameworks[entry.framework]
        wanted[framework.pk].add(entry.control_id)
        values = {field: getattr(entry, field) for field in fields}
        control = existing.get((framework.pk, entry.control_id))
        if control is None:
            control_model.objects.create(framework=framework, control_id=entry.control_id, position=position, **values)
            created += 1
            continue
        # A control that only moved in the file (position) is not reported as changed.
        changed = any(getattr(control, field) != value for field, value in values.items())
        if changed or control.position != position:
            for field, value in values.items():
                setattr(control, field, value)
            control.position = position
            control.save()
            updated += changed
    for (framework_id, control_id), control in existing.items():
        if control_id not in wanted.get(framework_id, set()):
            control.delete()
            removed += 1
    # Frameworks the file no longer names go too (their controls went above), with their snapshot rows.
    framework_model.objects.exclude(name__in=catalog.frameworks).delete()
    return SyncResult(
        frameworks=len(frameworks),
        controls=len(catalog.entries),
        created=created,
        updated=updated,
        removed=removed,
    )
