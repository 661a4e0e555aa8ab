"""`percept models finetune`: transfer learning from a shipped ``.pt`` detector or classifier.

Ultralytics' own trainer does the work (``YOLO(pt).train(...)``); this module checks the input,
makes the held-out split (`finetune_data`), names the augmentations, keeps the trainer offline,
reports progress, measures the held-out split before and after with `pipeline.evaluate` (the
service's crops / letterbox and backends: top-1 for a classifier, mAP50-95 / mAP50 for a
detector) and writes the best weights where asked, which load through `pipeline.backends`.

Augmentations (ultralytics' train arguments):

    option            classify                                    detect
    flip P            RandomHorizontalFlip(P)   (fliplr)          horizontal flip (fliplr)
    vflip P           RandomVerticalFlip(P)     (flipud)          vertical flip (flipud)
    crop F            RandomResizedCrop, area 1-F..1  (scale)     random zoom ±F (scale)
    color-jitter H,S,V  ColorJitter(hue H, saturation S,          HSV jitter (hsv_h, hsv_s, hsv_v)
                      brightness/contrast V)
    mosaic P          (an error)                                  mosaic of 4 images (mosaic)

ultralytics' other defaults are kept, except ``auto_augment`` (off: RandAugment would replace the
colour jitter) and ``close_mosaic`` (mosaic off for the last quarter of the epochs, at most 10).
The trainer runs without its integrations (analytics, Platform, Ray Tune, loggers), update check,
font download or AMP self-test download: nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..models import load_failure
from ..redact import quoted_url
from .export import DEFAULT_IMGSZ
from .export_inputs import current_folder
from .finetune_data import (
    Dataset,
    FinetuneError,
    apart,
    check_options,
    heldout_csv,
    outside,
    read_dataset,
    split,
    write_split,
)
from .offline import offline_ultralytics

DEFAULT_EPOCHS = 10
METRICS = {"accuracy_top1": "top-1", "mAP50-95(B)": "mAP50-95", "mAP50(B)": "mAP50"}  # ultralytics' validation


class TrainingError(RuntimeError):
    """Ultralytics' trainer failed on input that passed the checks (the CLI exits 1)."""


@dataclass(frozen=True)
class Augment:
    flip: float = 0.5
    vflip: float = 0.0
    crop: float = 0.5
    color_jitter: tuple[float, float, float] = (0.015, 0.7, 0.4)
    mosaic: float | None = None  # detect only; None: ultralytics' 1.0

    def train_args(self, task: str, epochs: int) -> dict[str, Any]:
        for name in ("flip", "vflip", "crop", "mosaic"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise FinetuneError(f"--{name}: between 0 and 1, got {value}")
        if len(self.color_jitter) != 3 or not all(0 <= v <= 1 for v in self.color_jitter):
            raise FinetuneError(f"--color-jitter: H,S,V each between 0 and 1, got {self.color_jitter}")
        h, s, v = self.color_jitter
        args: dict[str, Any] = {"fliplr": self.flip, "flipud": self.vflip, "scale": self.crop,
                                "hsv_h": h, "hsv_s": s, "hsv_v": v}
        if task == "classify":
            if self.mosaic is not None:
                raise FinetuneError("--mosaic: mosaic is a detection augmentation; a classifier is trained on crops")
            args["auto_augment"] = None
        else:
            args["mosaic"] = 1.0 if self.mosaic is None else self.mosaic
            args["close_mosaic"] = min(10, epochs // 4)
        return args


# --- checks before anything is written ------------------------------------------------------------

def check_weights(weights: str | Path, models_dir: str | None) -> tuple[Path, Any]:
    """(path, the loaded ``YOLO``) of an ultralytics ``.pt`` detector or classifier."""
    from ultralytics import YOLO

    from ..models import resolve_weights

    path = Path(resolve_weights(str(weights), models_dir)).expanduser()
    if not path.exists():
        where = f" (nor in {models_dir})" if models_dir else ""
        raise FinetuneError(f"weights: {quoted_url(weights)} does not exist{where}")
    if path.suffix != ".pt":
        raise FinetuneError(f"weights: {path.name}: fine-tuning starts from an ultralytics .pt file (an export "
                            "— OpenVINO, ONNX, TensorRT — cannot be trained); fine-tune the .pt, then export the result")
    try:
        model = YOLO(str(path))
    except Exception as exc:  # noqa: BLE001 -- ultralytics raises many types for a bad file
        raise FinetuneError(f"weights: cannot load {path}: {load_failure(exc)}") from None
    if model.task not in ("detect", "classify"):
        raise FinetuneError(f"weights: {path.name} is a {model.task} model; finetune handles detect and classify models")
    return path, model


def check_task(path: Path, task: str, ds: Dataset) -> None:
    if ds.task == task:
        return
    want = ("a classify model (e.g. yolov8n-cls-imagenet.pt)" if ds.task == "classify"
            else "a detect model (e.g. yolo11n-coco.pt)")
    other = ("a YOLO detection folder (images/ + labels/)" if task == "detect"
             else "a folder with one subfolder per class")
    raise FinetuneError(f"weights: {path.name} is a {task} model, but {ds.root} is a {ds.layout} dataset: "
                        f"fine-tune {want} on it, or give {path.name} {other}")


def freeze_layers(model: Any, freeze: int | None, backbone: bool, name: str) -> int | None:
    """The number of leading layers kept as they are: ``freeze``, or the backbone's length."""
    layers = len(model.model.model)
    if backbone:
        if freeze is not None:
            raise FinetuneError("--freeze and --freeze-backbone: give one of them")
        freeze = len(model.model.yaml.get("backbone", []))
    if freeze is None or freeze == 0:
        return None
    if not 0 < freeze < layers:
        raise FinetuneError(f"--freeze: between 0 and {layers - 1} ({name} has "
                            f"{layers} layers; {layers} would leave nothing to train), got {freeze}")
    return freeze


def check_out(out: str | Path | None, weights: Path, ds: Dataset, models_dir: str | None = None) -> Path:
    """The ``.pt`` the fine-tuned weights go to (default ``finetuned/<weights>-<data>.pt`` in the
    current folder, never in the models folder: `export_inputs.current_folder`, as ``models export``).
    Never the starting weights (--out naming them overwrote them) or --data's data.yaml."""
    default = f"finetuned/{weights.stem}-{ds.root.name or 'data'}.pt"
    path = Path(out).expanduser().absolute() if out else current_folder(models_dir, "file", FinetuneError) / default
    for option, given in (("the starting weights", weights), ("--data's data.yaml", ds.spec)):
        if given is not None and path.exists() and path.samefile(given):
            raise FinetuneError(f"--out: {path} is {option} ({given}), which fine-tuning never overwrites: "
                                "name another file")
    if path.suffix != ".pt":
        raise FinetuneError(f"--out: {path.name}: the fine-tuned weights are an ultralytics .pt file (end it in .pt)")
    if path.is_dir():
        raise FinetuneError(f"--out: {path} is a folder; name the .pt file to write")
    outside(path, ds, "--out")
    # writable? tried before training, not after it: a probe in the nearest folder that exists
    folder = next(p for p in path.parents if p.exists())
    probe = folder / f".{path.name}.percept-probe"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise FinetuneError(f"--out: cannot write {path}: {exc.strerror or exc}") from None
    return path


# --- training -----------------------------------------------------------------------------------

@contextlib.contextmanager
def offline_trainer() -> Iterator[None]:
    """Ultralytics' trainer without anything that reaches the network (`offline_ultralytics`: no
    integration callbacks, update check, package install or font download) and without its AMP
    self-test (it downloads a model; AMP stays on for a GPU, as ultralytics' default, and is never
    used on a CPU)."""
    from ultralytics.engine import trainer as trainer_module

    def check_amp(model: Any) -> bool:
        return next(model.parameters()).device.type == "cuda"

    with offline_ultralytics((trainer_module, "check_amp", check_amp)):
        yield


class _Progress:
    """A progress bar per epoch (ultralytics' own TQDM, on stderr) and the loss and validation
    metrics of each epoch, from the trainer's callbacks."""

    def __init__(self, epochs: int, say: Callable[[str], None] | None):
        self.epochs, self.say, self.bar, self.history = epochs, say, None, []
        self.t0 = time.perf_counter()

    def attach(self, model: Any) -> None:
        model.add_callback("on_train_epoch_start", self.epoch_start)
        model.add_callback("on_train_batch_end", self.batch_end)
        model.add_callback("on_train_epoch_end", self.epoch_end)
        model.add_callback("on_fit_epoch_end", self.fit_epoch_end)

    def epoch_start(self, trainer: Any) -> None:
        from ultralytics.utils.tqdm import TQDM

        if self.say:
            tty = sys.stderr.isatty()
            self.bar = TQDM(total=len(trainer.train_loader), desc=f"percept: epoch {trainer.epoch + 1}/{self.epochs}",
                            file=sys.stderr, disable=False, unit="batch", mininterval=0.1 if tty else 30.0)

    def batch_end(self, trainer: Any) -> None:
        if self.bar is not None:
            loss = sum(float(v) for v in (trainer.tloss or {}).values())
            self.bar.desc = f"percept: epoch {trainer.epoch + 1}/{self.epochs} loss {loss:.4f}"
            self.bar.update(1)

    def epoch_end(self, trainer: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def fit_epoch_end(self, trainer: Any) -> None:
        if trainer.epoch >= self.epochs:  # the trainer's final validation of best.pt: measured after, as percept eval
            return
        losses = {k.split("/", 1)[1]: v for k, v in trainer.label_loss_items(trainer.tloss or {}, prefix="train").items()}
        val = {k.split("/", 1)[1]: round(float(v), 5) for k, v in trainer.metrics.items() if k.startswith("metrics/")}
        entry = {"epoch": trainer.epoch + 1, "loss": round(sum(losses.values()), 5), "losses": losses, "val": val,
                 "seconds": round(time.perf_counter() - self.t0, 1)}
        self.history.append(entry)
        if self.say:
            shown = ", ".join(f"{METRICS[k]} {v:.3f}" for k, v in val.items() if k in METRICS)
            self.say(f"epoch {entry['epoch']}/{self.epochs}: loss {entry['loss']:.4f}, held-out {shown}")


def train(model: Any, args: dict[str, Any], say: Callable[[str], None] | None) -> tuple[Path, list[dict]]:
    """(best.pt, per-epoch loss and validation) of ``model.train(**args)``."""
    progress = _Progress(args["epochs"], say)
    progress.attach(model)
    try:
        model.train(**args)
    except Exception as exc:  # noqa: BLE001 -- one line names what the trainer hit
        raise TrainingError(f"ultralytics' trainer failed: {type(exc).__name__}: {str(exc).strip()[:400]}") from None
    finally:
        if progress.bar is not None:
            progress.bar.close()
    trainer = model.trainer
    best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)
    return best, progress.history


# --- before and after -------------------------------------------------------------------------------

def evaluate_heldout(weights: Path, names: dict[int, str], ds: Dataset, heldout: Path, work: Path, *, tag: str,
                     imgsz: int, device: str, threads: int) -> dict[str, Any] | None:
    """The held-out split measured as `percept eval` does; None when the model has none of the
    dataset's classes (classify) or other classes under the same ids (detect)."""
    from ..evaluate import evaluate_detector
    from ..evaluate_classifier import evaluate_classifier

    if ds.task == "classify":
        labels, _ = heldout_csv(names, heldout, work / f"heldout-{tag}.csv")
        if labels is None:
            return None
        r = evaluate_classifier(str(weights), heldout, labels, imgsz=imgsz, device=device, threads=threads)
        keep = ("top1", "per_class_recall", "images", "backend", "ms_per_image")
        return {k: r[k] for k in keep} | {"classes": len(r["per_class_recall"])}
    if any(names.get(k) != v for k, v in ds.names.items()):
        return None
    r = evaluate_detector(str(weights), heldout, imgsz=imgsz, device=device, threads=threads, categories={"all": ["*"]},
                          labelled=False)  # (a held-out split of backgrounds only: `write_split`)
    keep = ("map50_95", "map50", "precision", "recall", "instances", "images", "backend", "ms_per_image", "per_class")
    return {k: r[k] for k in keep}


def _before_note(ds: Dataset, before: dict | None, weights: Path) -> str | None:
    if before is None and ds.task == "classify":
        return f"before: {weights.name} has none of the {len(ds.names)} classes, so it cannot score them"
    if before is None:
        return f"before: {weights.name}'s classes differ from the dataset's (names from {ds.names_from})"
    if ds.task == "classify" and before["classes"] < len(ds.names):
        return f"before: top-1 over the {before['classes']} of {len(ds.names)} classes {weights.name} has"
    return None


# --- the command -------------------------------------------------------------------------------

def finetune(weights: str | Path, data: str | Path, *, out: str | Path | None = None, work: str | Path | None = None,
             epochs: int = DEFAULT_EPOCHS, imgsz: int | None = None, batch: int = 16, device: str = "auto",
             workers: int = 2, val_fraction: float = 0.2, seed: int = 0, freeze: int | None = None,
             freeze_backbone: bool = False, augment: Augment = Augment(), models_dir: str | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``weights`` on ``data``; returns the split, the loss and validation of each
    epoch, the held-out evaluation before and after, and where the weights were written.
    ``progress``: called with a line at each step (and a progress bar per epoch goes to stderr)."""
    import torch

    from ..models import choose_device

    with offline_trainer():
        src, model = check_weights(weights, models_dir)
        ds = read_dataset(data, model_names=dict(model.names))
        check_task(src, model.task, ds)
        imgsz = imgsz or DEFAULT_IMGSZ[ds.task]
        check_options(epochs, imgsz, batch, workers)
        aug_args = augment.train_args(ds.task, epochs)
        frozen = freeze_layers(model, freeze, freeze_backbone, src.name)
        target = check_out(out, src, ds, models_dir)
        if work is not None:
            apart(Path(work).expanduser().absolute(), ds)
        train_items, val_items = split(ds, val_fraction, seed)
        device, _ = choose_device(device, None)
        threads = torch.get_num_threads()  # evaluation would set a replica's 1 thread for the training too
        # (absolute: ultralytics puts a relative ``project`` under its own runs_dir, not here)
        work_dir = Path(work).expanduser().absolute() if work else Path(tempfile.mkdtemp(prefix="percept-finetune-"))
        try:
            return _run(model, src, ds, train_items, val_items, work_dir, target, device=device, threads=threads,
                        args={"epochs": epochs, "imgsz": imgsz, "batch": batch, "workers": workers, "seed": seed,
                              "freeze": frozen, **aug_args},
                        augment=augment, val_fraction=val_fraction, kept=work is not None, say=progress)
        finally:
            if work is None:
                shutil.rmtree(work_dir, ignore_errors=True)


def _run(model: Any, src: Path, ds: Dataset, train_items: list, val_items: list, work: Path, target: Path, *,
         device: str, threads: int, args: dict[str, Any], augment: Augment, val_fraction: float, kept: bool,
         say: Callable[[str], None] | None) -> dict[str, Any]:
    from ultralytics import YOLO

    t0 = time.perf_counter()
    say = say or (lambda line: None)
    work.mkdir(parents=True, exist_ok=True)
    split_dir = work / "split"
    if split_dir.exists():  # a --work folder used before: a fresh split (one a run made: `apart`)
        shutil.rmtree(split_dir)
    train_data, heldout = write_split(ds, train_items, val_items, split_dir)
    names0 = dict(model.names)
    say(f"{ds.layout}: {len(train_items)} training, {len(val_items)} held-out images, "
        f"{len(ds.names)} classes; measuring {src.name} on the held-out images")
    before = evaluate_heldout(src, names0, ds, heldout, work, tag="before", imgsz=args["imgsz"], device=device,
                              threads=threads)
    say(f"training {src.name} for {args['epochs']} epochs at imgsz {args['imgsz']}"
        + (f", first {args['freeze']} layers frozen" if args["freeze"] else ""))
    train_args = {**args, "data": str(train_data), "device": "cpu" if device == "cpu" else device.split(":")[-1],
                  "project": str(work), "name": "train", "exist_ok": True, "plots": False, "val": True,
                  "deterministic": True, "verbose": False}
    best, history = train(model, train_args, say)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial")
    shutil.copyfile(best, staging)
    staging.replace(target)
    say(f"wrote {target}; measuring it on the held-out images")
    after = evaluate_heldout(target, dict(YOLO(str(target)).names), ds, heldout, work, tag="after",
                             imgsz=args["imgsz"], device=device, threads=threads)
    if after is None:
        raise TrainingError(f"{target}: written, but its classes are not the dataset's")
    per_class = {name: [sum(1 for _, c in items if c == name) for items in (train_items, val_items)]
                 for name in ds.names.values()} if ds.task == "classify" else None
    note = _before_note(ds, before, src)
    return {
        "weights": str(src), "task": ds.task, "data": str(ds.root), "layout": ds.layout, "out": str(target),
        "names": [ds.names[k] for k in sorted(ds.names)], "names_from": ds.names_from,
        "split": {"train": len(train_items), "val": len(val_items), "kept_folder_split": ds.presplit,
                  "val_fraction": None if ds.presplit else val_fraction, "seed": args["seed"], "per_class": per_class},
        "imgsz": args["imgsz"], "epochs": args["epochs"], "batch": args["batch"], "device": device,
        "freeze": args["freeze"], "augment": asdict(augment),
        "train_args": {k: v for k, v in train_args.items() if k not in ("data", "project", "name", "exist_ok")},
        "history": history, "before": before, "after": after, "notes": [note] if note else [],
        "work": str(work) if kept else None, "seconds": round(time.perf_counter() - t0, 1), "warnings": [],
    }


# --- the table ----------------------------------------------------------------------------------

def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def finetune_table(r: dict[str, Any]) -> str:
    """Loss and validation per epoch, then the held-out evaluation before and after."""
    s = r["split"]
    frozen = f", first {r['freeze']} layers frozen" if r["freeze"] else ""
    lines = [(f"{Path(r['weights']).name} ({r['task']}) fine-tuned on {s['train']} images of {r['data']} "
              f"({len(r['names'])} classes), {s['val']} held out; imgsz {r['imgsz']}, {r['epochs']} epochs{frozen}, "
              f"{r['device']}, {r['seconds']:.0f} s → {r['out']}")]
    keys = [k for k in METRICS if any(k in e["val"] for e in r["history"])]
    lines.append("epoch  train loss  " + "  ".join(f"held-out {METRICS[k]}" for k in keys) + "  (ultralytics' val)")
    for e in r["history"]:
        cells = "  ".join(f"{_f(e['val'].get(k)):>{len(METRICS[k]) + 9}}" for k in keys)
        lines.append(f"{e['epoch']:>5}  {e['loss']:>10.4f}  {cells}")
    before, after = r["before"] or {}, r["after"]
    rows = [("top-1", "top1")] if r["task"] == "classify" else [("mAP50-95", "map50_95"), ("mAP50", "map50")]
    lines.append(f"held-out ({after['images']} images, as percept eval)  before   after")
    for label, key in rows:
        lines.append(f"{label:<37}{_f(before.get(key)):>7}  {_f(after.get(key)):>6}")
    if r["task"] == "classify":
        for name, recall in after["per_class_recall"].items():
            prior = (before.get("per_class_recall") or {}).get(name)
            lines.append(f"  recall {name:<29}{_f(prior):>7}  {_f(recall):>6}")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)
