"""How the decoder cuts a classifier's crops, read from its card alone (no network loaded): the
decoder needs the size, context, fit and minimum box, not the model; and the attributes the
classifier writes, so that a camera's next decoder knows which of a track's answers were its
(`pipeline.classify.CropClassification.seed`)."""

from __future__ import annotations

from typing import NamedTuple

from ..config import ClassifierConfig
from ..config_errors import ConfigError
from ..models import ModelError, resolve_weights
from . import resolve_card
from .card import ModelCard, read_labels


class CropSpec(NamedTuple):
    size: tuple[int, int]  # (width, height)
    context: float  # the box grown by this
    minimum: tuple[int, int] | None  # the smallest box (width, height) worth a crop
    fit: str  # how the box becomes the input (`pipeline.models.prepare_crop`)


def crop_spec(cfg: ClassifierConfig, *, models_dir: str | None, field: str = "classifiers") -> CropSpec:
    """How a classifier's crops are cut, from its card; an ultralytics classifier (no card)
    takes square context crops at ``cfg.imgsz``."""
    card = resolve_card(cfg, resolve_weights(cfg.weights, models_dir), models_dir=models_dir, field=field)
    if card is None:
        return CropSpec((cfg.imgsz, cfg.imgsz), 1.15, None, "context")
    return CropSpec(card.crop_size, card.crop_context, card.min_size, card.input.resize)


def written_attributes(cfg: ClassifierConfig, *, models_dir: str | None,
                       field: str = "classifiers") -> frozenset[str]:
    """The attributes a classifier's answers can hold: a card's softmax heads by their attribute
    name, its sigmoid heads' labels; an ultralytics classifier's ``attribute``."""
    weights = resolve_weights(cfg.weights, models_dir)
    card = resolve_card(cfg, weights, models_dir=models_dir, field=field)
    return frozenset([cfg.attribute]) if card is None else card_attributes(card, weights, field=field)


def card_attributes(card: ModelCard, weights: str | None, *, field: str) -> frozenset[str]:
    names: set[str] = set()
    for out in card.outputs:
        if out.kind == "softmax":
            names.add(out.attribute_name)
        elif out.kind == "sigmoid":
            try:
                names.update(read_labels(out, card, weights))
            except ConfigError as exc:
                raise ModelError(f"{field}: " + "; ".join(exc.errors)) from None
    return frozenset(names)
