"""A folder of PNG/JPEG images, grayscale or RGB, optionally labelled by sub-folder name.

All images must share one size; ids are the paths relative to the folder. Pixels stay uint8
(scale 1/255). With ``color="auto"`` the dataset is RGB if any image has colour, else grayscale.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.errors import DatasetError
from tasks.sources.base import SourceData, finish
from tasks.sources.files import check_folder

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


def image_files(folder: str) -> list[str]:
    """Relative paths of the images under ``folder`` (sorted, hidden entries skipped); every
    file of the folder is checked first (tasks/sources/files.py: no special files, no links out)."""
    return [rel for rel in check_folder(folder) if rel.lower().endswith(IMAGE_EXTENSIONS)]


def _open(folder: str, rel: str) -> Image.Image:
    path = os.path.join(folder, rel)
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable image ({exc}); replace or remove the file") from exc
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"{path}: refused, the image is too large to decode safely ({exc}); resize it first"
        ) from exc
    return img


def load_image_folder_source(
    folder: str,
    *,
    color: str = "auto",
    labels_from_folders: bool = False,
    scale: float | None = None,
    storage_dtype: str = "auto",
) -> SourceData:
    if color not in ("auto", "grayscale", "rgb"):
        raise DatasetError(f"color={color!r} must be auto, grayscale or rgb")
    files = image_files(folder)
    if not files:
        raise DatasetError(f"{folder}: no PNG/JPEG images found; input is empty")
    images = [_open(folder, rel) for rel in files]
    if color == "auto":
        color = "grayscale" if all(img.mode in GRAYSCALE_MODES for img in images) else "rgb"
    first_size = images[0].size
    for rel, img in zip(files, images, strict=True):
        if img.size != first_size:
            raise DatasetError(
                f"{folder}: images differ in size: {files[0]} is {first_size[0]}x{first_size[1]} but "
                f"{rel} is {img.size[0]}x{img.size[1]}; resize them to one size first"
            )
    mode = "L" if color == "grayscale" else "RGB"
    x = np.stack([np.asarray(img.convert(mode), dtype=np.uint8) for img in images])
    labels, names = None, ()
    if labels_from_folders:
        loose = [rel for rel in files if "/" not in rel]
        if loose:
            raise DatasetError(
                f"{folder}: {loose[0]} is not inside a sub-folder; with `labels_from_folders` every "
                "image must sit in <folder>/<label>/"
            )
        tops = [rel.split("/", 1)[0] for rel in files]
        names = tuple(sorted(set(tops)))
        labels = np.asarray([names.index(t) for t in tops], dtype=np.int64)
    return finish(
        "images",
        folder,
        "",
        x,
        ids=np.asarray(files, dtype=object),
        labels=labels,
        scale=scale,
        storage_dtype=storage_dtype,
        label_names=names,
        options={"color": color, "labels_from_folders": bool(labels_from_folders)},
    )
