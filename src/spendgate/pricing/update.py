"""Combining a newly converted catalog with the one in use (``spendgate prices update``).

A partial source (a file with two models) must not wipe out the other 3,700: by
default the new models are merged over the current catalog, and only with
``replace`` does the new document stand alone. Either way the caller gets the
list of what changed, so an update is never silent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from spendgate.errors import ConfigError
from spendgate.pricing.catalog import Catalog
from spendgate.pricing.schema import SCHEMA_VERSION, ModelPrice


@dataclass(slots=True)
class CatalogChanges:
    """What an update did to the catalog in use, model by model."""

    added: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)  # model -> the fields that differ
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    aliases_added: int = 0
    aliases_changed: int = 0
    aliases_removed: int = 0

    @property
    def any(self) -> bool:
        return bool(
            self.added
            or self.changed
            or self.removed
            or self.aliases_added
            or self.aliases_changed
            or self.aliases_removed
        )


def builtin_document() -> dict[str, Any]:
    """The catalog document shipped in the package."""
    text = resources.files("spendgate.pricing").joinpath("data/prices.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def current_document(path: Path) -> tuple[dict[str, Any], str]:
    """The catalog an update starts from: the file at ``path`` if there is one, else the built-in
    data; and a name for it. A file that is not a catalog is an error (merging into it would
    guess), not a reason to start from nothing."""
    if not path.exists():
        return builtin_document(), "the built-in catalog"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            str(path), f"cannot read the catalog to merge into ({exc}); use --replace"
        ) from None
    Catalog.from_document(document, where=str(path))  # raises ConfigError when it is no catalog
    return document, str(path)


def _normalised(name: str, data: Any, where: str) -> dict[str, Any]:
    # Through ModelPrice, so an older schema's spelling of the same price is not a change.
    return ModelPrice.from_data(name, data, where=f"{where}.models[{name!r}]").to_data()


def _fields_differing(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    fields: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            fields.extend(f"{key}.{sub}" for sub in _fields_differing(before, after))
        else:
            fields.append(key)
    return fields


def combine(
    current: Mapping[str, Any],
    incoming: Mapping[str, Any],
    *,
    replace: bool = False,
    current_where: str = "current catalog",
) -> tuple[dict[str, Any], CatalogChanges]:
    """The document to store, and what it changes relative to ``current``.

    Merge (the default): every incoming model and alias is added or replaces the current one;
    the current ones the source does not mention stay. ``replace``: the incoming document alone.
    """
    changes = CatalogChanges()
    old_models = current.get("models") or {}
    new_models = incoming["models"]
    old = {name: _normalised(name, data, current_where) for name, data in old_models.items()}
    new = {name: _normalised(name, data, "new catalog") for name, data in new_models.items()}
    for name, data in new.items():
        if name not in old:
            changes.added.append(name)
        elif old[name] != data:
            changes.changed[name] = _fields_differing(old[name], data)
        else:
            changes.unchanged += 1
    if replace:
        changes.removed = sorted(set(old) - set(new))
        models = new
    else:
        changes.unchanged += len(set(old) - set(new))
        models = {**old, **new}
    old_aliases: Mapping[str, str] = current.get("aliases") or {}
    new_aliases: Mapping[str, str] = incoming.get("aliases") or {}
    for alias, target in new_aliases.items():
        if alias not in old_aliases:
            changes.aliases_added += 1
        elif old_aliases[alias] != target:
            changes.aliases_changed += 1
    aliases = dict(new_aliases) if replace else {**old_aliases, **new_aliases}
    if replace:
        changes.aliases_removed = len(set(old_aliases) - set(new_aliases))
    # An alias must name a model that is still there (a replace can remove its target).
    aliases = {a: t for a, t in aliases.items() if t in models}
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "source": dict(incoming.get("source") or {}),
        "corrections": incoming.get("corrections", 0),
    }
    if not replace:
        document["merged_into"] = dict(current.get("source") or {})
    document["models"] = {name: models[name] for name in sorted(models)}
    document["aliases"] = {alias: aliases[alias] for alias in sorted(aliases)}
    return document, changes


def describe(changes: CatalogChanges, *, limit: int = 10) -> list[str]:
    """Lines for a person: counts, then the first ``limit`` names of each kind."""

    def names(items: list[str]) -> str:
        shown = ", ".join(items[:limit])
        return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")

    lines = [
        f"{len(changes.added)} added, {len(changes.changed)} changed, {len(changes.removed)} removed, "
        f"{changes.unchanged} unchanged; aliases: {changes.aliases_added} added, "
        f"{changes.aliases_changed} changed, {changes.aliases_removed} removed"
    ]
    if changes.added:
        lines.append(f"  added: {names(changes.added)}")
    if changes.changed:
        changed = [f"{name} ({', '.join(fields)})" for name, fields in changes.changed.items()]
        lines.append(f"  changed: {names(changed)}")
    if changes.removed:
        lines.append(f"  removed: {names(changes.removed)}")
    return lines
