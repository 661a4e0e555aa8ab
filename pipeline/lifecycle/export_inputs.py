"""What `percept models export` (and `models finetune`) take and where they write: the INT8
calibration frames, gathered from folders of images and video files and checked to decode, and the
rule that a default output never lands in the models folder (shared, often read-only)."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from ..evaluate import IMAGE_SUFFIXES, images_under
from ..redact import quoted_url
from .finetune_data import link_image

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts"}
RECOMMENDED_CALIBRATION = 300  # ultralytics' advice for INT8


class ExportError(ValueError):
    """Bad export input: unknown format, missing weights, wrong task, no calibration frames, no GPU."""


# --- calibration frames ---------------------------------------------------------------------------

def calibration_frames(sources: Sequence[str | Path], limit: int = RECOMMENDED_CALIBRATION,
                       into: Path | None = None, skipped: list[Path] | None = None) -> list[Path]:
    """The calibration images: every image under each folder, frames sampled from each video
    (written into ``into``), at most ``limit`` in all, taken evenly (`decodable`); those that do
    not decode go to ``skipped``."""
    images: list[Path] = []
    for source in sources:
        p = Path(source).expanduser()
        if not p.exists():
            raise ExportError(f"--calib: {quoted_url(source)} does not exist")
        if p.is_dir():
            found = images_under(p)  # (and its videos too: a recordings folder with one snapshot.jpg in it
            videos = sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)  # calibrated on that)
            if not found and not videos:
                raise ExportError(f"--calib: no images in {p} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                                  "subfolders too)")
            images += found
            images += [f for v in videos for f in _video_frames(v, limit, into)]
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            images += _video_frames(p, limit, into)
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            raise ExportError(f"--calib: {p.name} is neither a folder of images nor a video file")
    if not images:
        raise ExportError("--calib: no calibration images (give a folder of images or a video file)")
    found = decodable(images, limit, skipped if skipped is not None else [])
    if not found:
        raise ExportError(f"--calib: none of the {len(images)} images can be read as a whole image "
                          f"(e.g. {images[0]}): nothing to calibrate on")
    return found


def whole_image(path: Path) -> bool:
    """``path`` decodes whole: what ultralytics' calibration set keeps (its ``check_image`` drops
    what PIL cannot read to the end, such as a truncated JPEG that ``cv2.imread`` decodes in part,
    and an image under 10 pixels; checked here without its repair, which writes) and cv2 reads."""
    import cv2
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if min(im.size) < 10:
                return False
    except Exception:  # noqa: BLE001 -- PIL raises many types for a file that is no image
        return False
    return cv2.imread(str(path), cv2.IMREAD_COLOR) is not None


def decodable(images: Sequence[Path], limit: int, skipped: list[Path]) -> list[Path]:
    """At most ``limit`` of ``images`` that decode (`whole_image`), taken evenly: those of the
    even sample first, then the others until ``limit`` decode; in their order. The ones found not
    to decode go to ``skipped`` (they were counted as calibration images, which NNCF never saw)."""
    step = max(1.0, len(images) / limit)
    sample = sorted({int(i * step) for i in range(min(limit, len(images)))})
    taken = set(sample)
    good: list[int] = []
    for i in sample + [i for i in range(len(images)) if i not in taken]:
        if len(good) == limit:
            break
        if not whole_image(images[i]):
            skipped.append(images[i])
        else:
            good.append(i)
    return [images[i] for i in sorted(good)]


def _video_frames(video: Path, limit: int, into: Path | None) -> list[Path]:
    import cv2

    if into is None:
        raise ExportError(f"--calib: {video.name}: frames of a video need a folder to be written to")
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise ExportError(f"--calib: cannot read frames from {video}")
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0
    if 1 <= count <= 1e8:
        count = int(count)
        wanted = {int(i * count / min(limit, count)) for i in range(min(limit, count))}
    else:  # not indexed (a recording written as a stream: -2.3e17 frames): one a second, up to limit
        stride = max(1, round(cap.get(cv2.CAP_PROP_FPS) or 25))
        count, wanted = stride * limit, set(range(0, stride * limit, stride))
    # each video its own names: two clip.mp4 of two folders, or cam.mp4 and cam.avi, overwrote each other
    tag = hashlib.sha1(str(video.resolve()).encode()).hexdigest()[:8]
    out: list[Path] = []
    for index in range(count):
        if not cap.grab():
            break
        if index in wanted:
            ok, frame = cap.retrieve()
            if ok:
                path = into / f"{video.stem}_{tag}_{index:06d}.jpg"
                cv2.imwrite(str(path), frame)
                out.append(path)
    cap.release()
    if not out:
        raise ExportError(f"--calib: cannot read frames from {video}")
    return out


@contextlib.contextmanager
def calibration_data(sources: Sequence[str | Path], task: str, names: dict[int, str],
                     limit: int = RECOMMENDED_CALIBRATION, warnings: list[str] | None = None
                     ) -> Iterator[tuple[str, int]]:
    """(the ``data=`` ultralytics calibrates on, number of images): the frames linked one by one
    into a temporary folder, so ultralytics' caches land there and never beside the user's files.
    Images that do not decode are left out, named in ``warnings``."""
    with tempfile.TemporaryDirectory(prefix="percept-calib-") as tmp:
        root = Path(tmp)
        (root / "frames").mkdir()
        skipped: list[Path] = []
        images = calibration_frames(sources, limit, into=root / "frames", skipped=skipped)
        if skipped and warnings is not None:
            shown = ", ".join(map(str, skipped[:5])) + (f", … ({len(skipped)} in all)" if len(skipped) > 5 else "")
            warnings.append(f"--calib: left out, cannot be read as a whole image: {shown}")
        # detect: a YOLO dataset without labels; classify: a folder-per-class dataset of one class
        folders = [root / "images"] if task == "detect" else [root / "train" / "frames", root / "val" / "frames"]
        for folder in folders:
            folder.mkdir(parents=True)
            for i, image in enumerate(images):
                link_image(image, folder / f"{i:05d}{image.suffix.lower()}")
        if task == "classify":
            yield str(root), len(images)
            return
        spec = {"path": str(root), "train": "images", "val": "images", "names": dict(names)}
        (root / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        yield str(root / "data.yaml"), len(images)


# --- where a default output goes ------------------------------------------------------------

def in_models_folder(path: Path, models_dir: str | None) -> bool:
    """``path`` is in the models folder, as named or where its links lead (a folder of links to the files)."""
    return models_dir is not None and any(
        p.is_relative_to(d) for p in (path.absolute(), path.resolve())
        for d in (Path(models_dir).expanduser().absolute(), Path(models_dir).expanduser().resolve()))


def current_folder(models_dir: str | None, what: str = "folder", error: type[ValueError] = ExportError) -> Path:
    """The current folder, where a default output goes; ``error`` naming ``--out`` when it is in
    the models folder (shared, often read-only: never written unless ``--out`` names it).
    ``what``: what --out names (export: a folder; finetune: a .pt file)."""
    here = Path.cwd()
    if in_models_folder(here, models_dir):
        raise error(f"--out: the current folder {here} is in the models folder (PERCEPT_MODELS_DIR={models_dir}), "
                    f"which is never written unless --out names it: name the {what} with --out, or run from another")
    return here
