"""Every model of a config loaded once, before anything starts: a missing file, a card that
disagrees with its network, an ``on:`` label no detector has, two classifiers writing the same
attribute — each a `ConfigError` line naming the config path (exit 2)."""

from __future__ import annotations

from typing import Any

from ..config_errors import ConfigError
from ..models import ModelError
from . import load_classifier, load_detector


def check_models(config: Any) -> dict[str, Any]:
    """Load every detector and classifier of a `PerceptConfig` (no warm-up); returns the loaded
    backends by deployment name, raises `ConfigError` with one line per problem."""
    errors: list[str] = []
    loaded: dict[str, Any] = {}
    labels_of: dict[str, set[str]] = {}  # category → detector labels that map to it
    detectors_failed = False  # (then what the others give is not all there is)
    for section in config.detector_sections():
        try:
            det = load_detector(section.cfg, models_dir=config.models_dir, field=section.field, warmup=False)
        except (ModelError, ConfigError) as exc:
            errors.append(_line(exc))
            detectors_failed = True
            continue
        loaded[section.deployment] = det
        # the backend's own map, made (and refused when nothing maps) as it loaded: built again
        # here, it warned of a label the model lacks twice
        for label, category in det.categories.by_class.values():
            labels_of.setdefault(category, set()).add(label)
    written: dict[tuple[str, str], str] = {}  # (category, attribute) → the field that writes it
    for section in config.classifier_sections():
        try:
            clf = load_classifier(section.cfg, models_dir=config.models_dir, field=section.field, warmup=False)
        except (ModelError, ConfigError) as exc:
            errors.append(_line(exc))
            continue
        loaded[section.deployment] = clf
        known = labels_of.get(section.category or "")
        if known is None and section.category and not detectors_failed:  # (a label mistyped: persons)
            errors.append(f"{section.field}: no detector gives category {section.category!r} any object (none of its "
                          "labels in the detectors' categories is a class of their model): it would never run")
        for key in ("on", "not_on"):
            for i, label in enumerate(getattr(section.cfg, key) or []):
                if known is not None and label not in known:
                    errors.append(f"{section.field}.{key}[{i}]: no detector gives {label!r} in category "
                                  f"{section.category!r} (they give {sorted(known)[:12]})")
        for attribute in clf.attributes:
            key = (section.category or "", attribute)
            if key in written:
                errors.append(f"{section.field}: writes attribute {attribute!r}, so does {written[key]}; "
                              "each attribute has one classifier (rename one head in its card, or attribute:)")
            written.setdefault(key, section.field)
    if errors:
        raise ConfigError(errors)
    return loaded


def _line(exc: Exception) -> str:
    return "; ".join(exc.errors) if isinstance(exc, ConfigError) else str(exc)
