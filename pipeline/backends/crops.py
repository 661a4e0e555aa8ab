"""How the decoder cuts a classifier's crops, read from its card alone (no network loaded): the
decoder needs the size, context and minimum box, not the model."""

from __future__ import annotations

from ..config import ClassifierConfig
from ..models import resolve_weights
from . import resolve_card


def crop_spec(cfg: ClassifierConfig, *, models_dir: str | None,
              field: str = "classifiers") -> tuple[tuple[int, int], float, tuple[int, int] | None]:
    """((width, height), context, minimum box (width, height) or None) for a classifier; an
    ultralytics classifier (no card) takes square crops at ``cfg.imgsz``."""
    card = resolve_card(cfg, resolve_weights(cfg.weights, models_dir), models_dir=models_dir, field=field)
    if card is None:
        return (cfg.imgsz, cfg.imgsz), 1.15, None
    return card.crop_size, card.crop_context, card.min_size
