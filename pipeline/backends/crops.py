"""How the decoder cuts a classifier's crops, read from its card alone (no network loaded): the
decoder needs the size, context and minimum box, not the model."""

from __future__ import annotations

from pathlib import Path

from ..config import ClassifierConfig
from ..models import resolve_weights
from .card import find_card, load_card


def crop_spec(cfg: ClassifierConfig, *, models_dir: str | None) -> tuple[tuple[int, int], float, tuple[int, int] | None]:
    """((width, height), context, minimum box (width, height) or None) for a classifier."""
    card_path = None
    if cfg.card:
        card_path = Path(cfg.card).expanduser()
        if not card_path.exists() and models_dir:
            card_path = Path(models_dir) / cfg.card
    else:
        card_path = find_card(resolve_weights(cfg.weights, models_dir))
    if card_path is None or not card_path.exists():
        return (cfg.imgsz, cfg.imgsz), 1.15, None
    card = load_card(card_path)
    return card.crop_size, card.crop_context, card.min_size
