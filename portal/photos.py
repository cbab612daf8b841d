"""The applicant's photo: checked (type, size, dimensions), re-encoded without its metadata (a
phone's photo carries the place it was taken), and stored outside the web root under a random
name, readable by the server's user only. Never served back: operators check it (issue 13)."""

from __future__ import annotations

import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

PHOTO_MAX_BYTES = 4 * 1024 * 1024          # what a phone's camera gives, with room
PHOTO_MIN_WIDTH_PX, PHOTO_MIN_HEIGHT_PX = 300, 400   # enough to print on the card
PHOTO_MAX_SIDE_PX = 8000                   # refused before decoding: no decompression bomb
FORMATS = {"JPEG": "jpg", "PNG": "png"}
FILE_MODE, DIR_MODE = 0o600, 0o700


class PhotoRefused(ValueError):
    """The message is French, for the student."""


@dataclass(frozen=True)
class StoredPhoto:
    file_name: str
    size_bytes: int
    width_px: int
    height_px: int


def store_photo(data: bytes, photo_dir: Path) -> StoredPhoto:
    if not data:
        raise PhotoRefused("Choisissez une photo (JPEG ou PNG)")
    if len(data) > PHOTO_MAX_BYTES:
        raise PhotoRefused(f"Photo trop lourde : {PHOTO_MAX_BYTES // (1024 * 1024)} Mo au plus")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            kind, (width, height) = probe.format, probe.size
            if kind not in FORMATS:
                raise PhotoRefused("La photo doit être au format JPEG ou PNG")
            if max(width, height) > PHOTO_MAX_SIDE_PX:
                raise PhotoRefused(f"Photo trop grande : {PHOTO_MAX_SIDE_PX} pixels de côté au plus")
            if width < PHOTO_MIN_WIDTH_PX or height < PHOTO_MIN_HEIGHT_PX:
                raise PhotoRefused(f"Photo trop petite : au moins {PHOTO_MIN_WIDTH_PX} × "
                                   f"{PHOTO_MIN_HEIGHT_PX} pixels")
            probe.load()
            clean = io.BytesIO()
            probe.convert("RGB" if kind == "JPEG" else "RGBA").save(clean, format=kind)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise PhotoRefused("Ce fichier n'est pas une photo lisible (JPEG ou PNG)") from None
    photo_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    name = f"{secrets.token_hex(16)}.{FORMATS[kind]}"
    descriptor = os.open(photo_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(clean.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    return StoredPhoto(name, len(clean.getvalue()), width, height)


def remove_photo(photo_dir: Path, file_name: str | None) -> None:
    if file_name:
        (photo_dir / file_name).unlink(missing_ok=True)
