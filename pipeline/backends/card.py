"""Model cards: what a plain network expects and what its outputs mean.

A card is a small YAML file. The project ships one per known model under ``configs/models/``
(found by the weights' file name, see `find_card`); a user writes one for their own network
and names it in the config (``card: path/to/card.yaml``). It is validated like the config:
every error names the card's file and the field (``gtsrb.yaml: outputs[0].labels: ...``).

    type: openvino              # the backend that runs it (one module per type)
    task: classify              # classify | detect
    files: [gtsrb_gray32.xml, gtsrb_gray32.pb]
    input:
      name: conv2d_31_input:0   # optional when the network has one input
      size: [32, 32]            # height, width
      layout: NHWC              # NCHW | NHWC
      color: GRAY               # BGR | RGB | GRAY
      scale: 0.00392156862      # tensor = (pixel * scale - mean) / std
    outputs:
      - name: dense_10/Softmax:0
        kind: softmax           # softmax | sigmoid | detections | ignore
        attribute: sign
        labels_file: signnames.csv
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from ..config_errors import ConfigError, format_validation_error
from ..config_models import RESERVED_ATTRIBUTE, RESERVED_WHY

ENV_CARDS_DIR = "PERCEPT_CARDS_DIR"


def _cards_dir() -> Path:
    """PERCEPT_CARDS_DIR if set; else the repository's configs/models (a checkout, an editable
    install); else the copy an installed wheel carries (``pipeline/cards``: pyproject.toml)."""
    if os.environ.get(ENV_CARDS_DIR):
        return Path(os.environ[ENV_CARDS_DIR])
    checkout = Path(__file__).resolve().parents[2] / "configs" / "models"
    return checkout if checkout.is_dir() else Path(__file__).resolve().parents[1] / "cards"


CARDS_DIR = _cards_dir()
ATTRIBUTE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def sigmoid_labels_problem(labels: Sequence[str]) -> str | None:
    """Why a sigmoid output's labels (each an attribute it writes) cannot be attribute names,
    inline in the card or from its labels file; None when they can."""
    bad = [n for n in labels if not re.match(ATTRIBUTE_NAME, n)]
    if bad:
        return f"sigmoid labels are attribute names and must match {ATTRIBUTE_NAME}, got {bad[0]!r}"
    return RESERVED_WHY if RESERVED_ATTRIBUTE in labels else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CardInput(_Strict):
    name: str | None = Field(None, description="input tensor name; optional when the network has one input")
    size: tuple[int, int] = Field(description="[height, width] the network takes")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["BGR", "RGB", "GRAY"] = "BGR"
    scale: float = Field(1.0, gt=0, description="tensor = (pixel * scale - mean) / std")
    mean: list[float] = Field(default_factory=lambda: [0.0], description="one value or one per channel")
    std: list[float] = Field(default_factory=lambda: [1.0], description="one value or one per channel")
    resize: Literal["context", "stretch", "letterbox"] = Field(
        "context", description="classifiers: how a box (grown by crop_context) becomes the input: context, "
                               "widened to the input's aspect (never stretched); stretch, to the input's size; "
                               "letterbox, fitted inside with pad_value borders. Detectors always letterbox")
    pad_value: int = Field(114, ge=0, le=255, description="letterbox border")

    @model_validator(mode="after")
    def _channels(self) -> "CardInput":
        channels = 1 if self.color == "GRAY" else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, channels):
                raise ValueError(f"{name}: {len(values)} values for {channels} channel(s) ({self.color})")
        if any(v == 0 for v in self.std):
            raise ValueError("std: must not contain 0")
        if min(self.size) < 1:
            raise ValueError(f"size: must be positive, got {list(self.size)}")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3


class CardOutput(_Strict):
    name: str = Field(description="output tensor name in the network")
    kind: Literal["softmax", "sigmoid", "detections", "ignore"]
    attribute: str | None = Field(
        None, pattern=ATTRIBUTE_NAME,
        description="softmax: the attribute it writes (default: the output name); sigmoid: unused")
    labels: list[str] | None = Field(None, description="class names (softmax, detections) or attribute names (sigmoid)")
    labels_file: str | None = Field(None, description="CSV (ClassId,Name), YAML (names:) or one name per line; "
                                    "relative to the card, else to the weights")
    logits: bool = Field(False, description="raw scores: apply softmax / sigmoid first")
    threshold: float = Field(0.5, ge=0, le=1, description="sigmoid: value = probability >= threshold")
    layout: Literal["yolov5", "yolov8", "ssd", "yunet"] | None = Field(
        None, description="detections: yolov5 [1,N,5+C] with objectness; yolov8/11 [1,4+C,N]; ssd [1,1,N,7]; "
        "yunet: OpenCV's YuNet outputs, decoded by cv2.FaceDetectorYN (type: yunet)")

    @model_validator(mode="after")
    def _by_kind(self) -> "CardOutput":
        if self.kind == "detections" and self.layout is None:
            raise ValueError("layout: required for a detections output (yolov5, yolov8, ssd or yunet)")
        if self.kind != "detections" and self.layout is not None:
            raise ValueError(f"layout: only for detections outputs, this one is {self.kind}")
        if self.kind in ("softmax", "sigmoid") and self.labels is None and self.labels_file is None:
            raise ValueError(f"labels: a {self.kind} output needs labels or labels_file")
        if self.labels is not None and self.labels_file is not None:
            raise ValueError("labels: give labels or labels_file, not both")
        if self.kind == "sigmoid" and self.labels and (problem := sigmoid_labels_problem(self.labels)):
            raise ValueError(f"labels: {problem}")
        if self.kind == "softmax" and self.attribute_name == RESERVED_ATTRIBUTE:
            raise ValueError(f"attribute: {RESERVED_WHY}")
        return self

    @property
    def attribute_name(self) -> str:
        return self.attribute or self.name


class ModelCard(_Strict):
    type: Literal["openvino", "yunet"] = Field("openvino", description="the backend that runs the network")
    task: Literal["classify", "detect"]
    description: str = ""
    files: list[str] = Field(default_factory=list, description="weight file names this card describes")
    input: CardInput
    outputs: list[CardOutput] = Field(min_length=1)
    min_size: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="classify: smallest box [width, height] in camera pixels worth classifying")
    crop_context: float = Field(1.15, ge=1, le=4, description="classify: box grown by this before cropping")
    nms_iou: float = Field(0.45, ge=0, le=1, description="detect: NMS IoU threshold")
    path: str | None = Field(None, exclude=True, description="where the card was read from (set by load_card)")

    @model_validator(mode="after")
    def _task_outputs(self) -> "ModelCard":
        kinds = [o.kind for o in self.outputs]
        yunet = [o.layout == "yunet" for o in self.outputs if o.kind == "detections"] == [True]
        if (self.type == "yunet") != (yunet and self.task == "detect"):
            raise ValueError("type: yunet goes with task: detect and one detections output of layout yunet "
                             "(and layout yunet only with type: yunet)")
        if self.task == "detect" and kinds.count("detections") != 1:
            raise ValueError("outputs: a detect card has exactly one detections output")
        if self.task == "classify":
            if "detections" in kinds:
                raise ValueError("outputs: a classify card has no detections output")
            if not any(k in ("softmax", "sigmoid") for k in kinds):
                raise ValueError("outputs: a classify card needs a softmax or sigmoid output")
        return self

    @property
    def crop_size(self) -> tuple[int, int]:
        """(width, height) crops are cut at for this network."""
        h, w = self.input.size
        return w, h

    def where(self) -> str:
        return self.path or "<card>"


MAX_CARD_BYTES = 64 * 1024


def load_card(path: str | Path) -> ModelCard:
    """Read and validate a card; `ConfigError` naming the file and field otherwise."""
    p = Path(path)
    # a card is a small YAML file: nothing else is read (a path given over the API could name any file)
    if p.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError([f"{p}: a model card is a .yaml file"])
    try:
        if not p.is_file() or p.stat().st_size > MAX_CARD_BYTES:
            raise ConfigError([f"{p}: a model card is a YAML file of at most {MAX_CARD_BYTES // 1024} KiB"])
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{p}: YAML syntax error{_yaml_position(exc)}: {getattr(exc, 'problem', None) or 'not YAML'}"]) from None
    if not isinstance(data, dict) or not {"task", "input", "outputs"} & set(data):
        raise ConfigError([f"{p}: not a model card (a mapping with task, input and outputs)"])
    try:
        card = ModelCard.model_validate(data)
    except ValidationError as exc:  # the file's values are not quoted: its path may have come over the API
        raise ConfigError([f"{p}: {line}" for line in format_validation_error(exc, quote=False)]) from None
    return card.model_copy(update={"path": str(p)})


def find_card(weights: str | Path, cards_dir: Path = CARDS_DIR) -> Path | None:
    """The shipped card whose ``files`` names this weights file (by file name), if any."""
    name = Path(str(weights).rstrip("/")).name
    for candidate in sorted(cards_dir.glob("*.yaml")):
        try:
            data = yaml.safe_load(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):  # (ValueError: not UTF-8) another file's trouble, not this model's
            continue
        files = data.get("files") if isinstance(data, dict) else None
        if isinstance(files, list) and name in files:
            return candidate
    return None


MAX_LABELS_BYTES = 1024 * 1024


def read_labels(output: CardOutput, card: ModelCard, weights: str | Path | None) -> list[str]:
    """The output's labels, from the card or its labels file (next to the card, else the weights).
    A labels file that cannot be read or parsed is a `ConfigError` naming the card, the field,
    the file and the line; its text is never quoted (a card path can come over the API)."""
    if output.labels is not None:
        return list(output.labels)
    if output.labels_file is None:
        return []
    index = next((i for i, o in enumerate(card.outputs) if o is output), None)
    head = f"outputs[{index}]" if index is not None else f"outputs.{output.name}"
    field = f"{card.where()}: {head}.labels_file"
    candidates = []
    if card.path:
        candidates.append(Path(card.path).parent / output.labels_file)
    if weights:
        candidates.append(Path(str(weights)).parent / output.labels_file)
    for path in candidates:
        if path.exists():
            labels = _labels_from(path, f"{field}: {path}")
            # (a file's sigmoid labels wrote any attribute: `unclassified` too, over the reasons there)
            if output.kind == "sigmoid" and (problem := sigmoid_labels_problem(labels)):
                raise ConfigError([f"{field}: {path}: {problem}"])
            return labels
    looked = ", ".join(str(c.parent) for c in candidates) or "nowhere"
    raise ConfigError([f"{field}: {output.labels_file!r} not found (looked in {looked})"])


def _labels_from(path: Path, where: str) -> list[str]:
    """The labels of a CSV (ClassId,Name; a header line is skipped), a YAML (``names:``, a list
    or class id → name) or a text file (one name per line); ``where`` starts every error."""
    if not path.is_file():
        raise ConfigError([f"{where}: not a file (a labels file is a .csv, .yaml or text file)"])
    try:
        if path.stat().st_size > MAX_LABELS_BYTES:
            raise ConfigError([f"{where}: a labels file is at most {MAX_LABELS_BYTES // 1024} KiB"])
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: not UTF-8 text"]) from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        labels = _yaml_labels(text, where)
    elif suffix == ".csv":
        labels = _csv_labels(text, where)
    else:
        labels = [line.strip() for line in text.rstrip().splitlines()]  # one a line: the line is the id
        blank = [n for n, label in enumerate(labels, 1) if not label]
        if blank:  # (skipped, it would give every later label the id before its own)
            raise ConfigError([f"{where}: line {blank[0]} is blank (a labels file has one label a line, "
                               f"in the model's class order)"])
    if not labels:
        raise ConfigError([f"{where}: no labels in it"])
    return labels


def _csv_labels(text: str, where: str) -> list[str]:
    reader = csv.reader(io.StringIO(text))
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]  # blank lines skipped
    if rows and not rows[0][1][0].strip().isdigit():
        rows = rows[1:]  # the header (ClassId,Name)
    by_id: dict[int, tuple[int, str]] = {}
    for line, row in rows:
        if len(row) < 2:
            raise ConfigError([f"{where}: line {line}: expected two columns, ClassId,Name"])
        try:
            class_id = int(row[0].strip())
        except ValueError:
            raise ConfigError([f"{where}: line {line}: the ClassId (first column) is not a whole number"]) from None
        if class_id in by_id:
            raise ConfigError([f"{where}: line {line}: ClassId {class_id} again (first at line {by_id[class_id][0]})"])
        by_id[class_id] = (line, row[1].strip())
    _check_ids(by_id, where)
    return [by_id[i][1] for i in sorted(by_id)]


def _yaml_labels(text: str, where: str) -> list[str]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{where}: YAML syntax error{_yaml_position(exc)}"]) from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        return [_yaml_name(name, f"{where}: names: entry {position}") for position, name in enumerate(names, 1)]
    if not isinstance(names, dict):
        raise ConfigError([f"{where}: names: a list of class names, or class id → name, is needed"])
    by_id: dict[int, tuple[int, str]] = {}
    for position, (key, name) in enumerate(names.items(), 1):
        if isinstance(key, bool) or not str(key).strip().isdigit():
            raise ConfigError([f"{where}: names: entry {position}: its key is not a class id "
                               "(a whole number 0, 1, ...)"])
        if int(str(key)) in by_id:
            raise ConfigError([f"{where}: names: entry {position}: class id {int(str(key))} again"])
        by_id[int(str(key))] = (position, _yaml_name(name, f"{where}: names: entry {position}"))
    _check_ids(by_id, where)
    return [by_id[i][1] for i in sorted(by_id)]


def _yaml_name(name: Any, where: str) -> str:
    """A class name from a YAML labels file: `off`, `no`, `on`, `yes` unquoted are YAML booleans,
    which became the labels "False" / "True"; an empty entry became "None"."""
    if isinstance(name, bool) or name is None:
        raise ConfigError([f"{where}: read as {'a boolean' if name is not None else 'nothing'} "
                           f"(YAML takes off/on/no/yes/true/false unquoted so): quote the class name"])
    if not isinstance(name, (str, int, float)):
        raise ConfigError([f"{where}: a class name is text, got a {type(name).__name__}"])
    return str(name)


def _yaml_position(exc: yaml.YAMLError) -> str:
    """`` at line L, column C`` of a YAML error (its text is never quoted), or nothing."""
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _check_ids(by_id: dict[int, Any], where: str) -> None:
    """Class ids 0..N-1, each once: a gap would give the classes after it the wrong names."""
    missing = sorted(set(range(len(by_id))) - set(by_id))
    if missing:
        raise ConfigError([f"{where}: class ids run from 0 to {len(by_id) - 1} without a gap; "
                           f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}"])
