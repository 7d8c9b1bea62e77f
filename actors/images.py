"""Images to model input, with pillow and numpy, as a CLIP model's preprocessor_config.json says.

Decode (downscaled while decoding where pillow can: JPEG `draft`), upright, RGB, resize the shortest
side, centre crop: that runs in CPU tasks and gives uint8 [n, h, w, 3], a quarter of the float32 bytes,
to carry to the device. Rescale and mean/std normalisation are one vectorised step next to the device.

Only JPEG, PNG, WebP, GIF, BMP and TIFF are opened (the first frame of an animation or a multi-page
file): pillow never tries its other formats on untrusted bytes (EPS would run Ghostscript). A photo is
turned upright as its EXIF Orientation says, as a viewer shows it; transformers' CLIPImageProcessor
does not do this, so a phone photo stored sideways embeds as the upright photo here, not as it does
there. 16-bit grey keeps its tones (pillow's own conversion clips it to white); 32-bit and float grey
are spread over 0-255 from the image's own range. A file that cannot be decoded, is truncated, is of
another format, has more pixels than MAX_PIXELS, is over MAX_ASPECT times as long one way as the other,
or would resize to over MAX_PIXELS is an error value with a reason, never an exception that stops a batch.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile

PREPROCESSOR_FILE = "preprocessor_config.json"
# Decompression-bomb guard: pillow's own default (89M) warns and 2x that raises; we refuse above this,
# for the file as decoded and for the image the resize makes of it.
MAX_PIXELS = 64_000_000
MAX_BYTES = 50 * 1024 * 1024
# 20:1 admits phone panoramas (about 10:1 at most), web banners (970x90) and scrolling screenshots up to
# 1080x21,600; beyond it the centre crop would show under a twentieth of the image. It also bounds the
# resize, to 20 * shortest_edge**2 pixels (1M at 224): a 10,000,000x1 PNG of 1.3 KB asked for 224x2.24G.
MAX_ASPECT = 20
ACCEPTED = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
SEND = "send JPEG, PNG, WEBP, GIF, BMP or TIFF"
# What pillow raises on malformed bytes: its own Image.open takes SyntaxError, IndexError, TypeError and
# struct.error to mean "not this format"; ValueError (a short PNG header, a PNG text chunk inflating past
# its limit, a TIFF with float dimensions) and TypeError (a TIFF's float strip offset) escape open/load.
MALFORMED = (OSError, SyntaxError, ValueError, TypeError, IndexError, struct.error)
# EXIF Orientation -> the transpose that shows the photo upright: ImageOps.exif_transpose's table. That
# function also rewrites the EXIF block, which raised TypeError or struct.error on 10 of 4,055 JPEGs
# with a fuzzed EXIF block whose pixels decode; the pixels are all we need.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class BadImage(ValueError):
    """An image that cannot be embedded: a row error with this reason, never a failed batch."""


@dataclass(frozen=True)
class ImageConfig:
    shortest_edge: int = 224
    crop: tuple[int, int] = (224, 224)  # height, width
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    resample: int = Image.Resampling.BICUBIC
    rescale: float = 1 / 255

    @classmethod
    def from_file(cls, path: Path) -> ImageConfig:
        """From a `transformers` preprocessor_config.json (CLIPImageProcessor's keys)."""
        raw = json.loads(path.read_text())
        size, crop = raw.get("size", {}), raw.get("crop_size", {})
        edge = size.get("shortest_edge", size.get("height", 224)) if isinstance(size, dict) else int(size)
        crop_hw = (crop.get("height", edge), crop.get("width", edge)) if isinstance(crop, dict) else (int(crop), int(crop))
        return cls(shortest_edge=int(edge), crop=(int(crop_hw[0]), int(crop_hw[1])),
                   mean=tuple(raw.get("image_mean", cls.mean)), std=tuple(raw.get("image_std", cls.std)),
                   resample=int(raw.get("resample", cls.resample)), rescale=float(raw.get("rescale_factor", cls.rescale)))


def decode(data: bytes, config: ImageConfig) -> Image.Image:
    """An upright RGB image at least `shortest_edge` on its short side, or BadImage saying why not."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadImage(f"not image bytes ({type(data).__name__})")
    if len(data) == 0:
        raise BadImage("empty file")
    if len(data) > MAX_BYTES:
        raise BadImage(f"file of {len(data):,} bytes is over the {MAX_BYTES:,}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED)
            width, height = image.size
            check_size(width, height, config)
            # JPEG can decode at 1/2, 1/4 or 1/8 scale: far less work for a large photo, and the
            # result is still at least the size the resize needs. Sizes here are as stored: a quarter
            # turn from EXIF swaps the sides, not which one is short, so the scale holds after it.
            scale = config.shortest_edge / min(width, height)
            if image.format in ("JPEG", "MPO") and scale < 0.5:  # MPO: a phone's JPEG with a second picture
                image.draft("RGB", (int(width * scale) + 1, int(height * scale) + 1))
            image.load()
        return to_rgb(upright(image))
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"too many pixels (decompression bomb?): {e}") from None
    except Image.UnidentifiedImageError:
        raise BadImage(unidentified(data[:16])) from None
    except MALFORMED as e:
        raise BadImage(f"cannot decode image: {e}") from None


def check_size(width: int, height: int, config: ImageConfig) -> None:
    """BadImage unless the file, and the image the resize makes of it, are within the limits."""
    if width * height > MAX_PIXELS:
        raise BadImage(f"{width}x{height} pixels is over the {MAX_PIXELS:,}-pixel limit (decompression bomb?)")
    short, long = sorted((width, height))
    if long > MAX_ASPECT * short:
        raise BadImage(f"{width}x{height} is {long / short:,.0f}:1, over the {MAX_ASPECT}:1 aspect-ratio limit "
                       f"(the centre crop would show under 1/{MAX_ASPECT} of it): crop or split it")
    new_width, new_height = resized(width, height, config)
    if new_width * new_height > MAX_PIXELS:
        raise BadImage(f"{width}x{height} resized to {new_width}x{new_height} is over the {MAX_PIXELS:,}-pixel "
                       f"limit: crop it nearer to square")


def unidentified(head: bytes) -> str:
    """Why no accepted format opened a file: another format, named by its signature only (no parser runs)."""
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        try:
            known = accept is not None and accept(head)
        except MALFORMED:  # some signature checks index past a short file's head
            continue
        if known and name in (*ACCEPTED, "MPO"):
            return f"cannot decode image: not a valid {name} file"
        if known:
            return f"format {name} is not accepted; {SEND}"
    return f"cannot decode image: not an image file of an accepted format; {SEND}"


def upright(image: Image.Image) -> Image.Image:
    """The image as its EXIF Orientation says it is shown (phones store photos sideways and say so).
    A TIFF is turned by pillow itself while loading, which drops the tag: never twice."""
    try:
        method = UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation))
    except MALFORMED:  # EXIF that is not TIFF-structured (seen in PNG and WebP): the pixels are good, as stored
        return image
    return image if method is None else image.transpose(method)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparent areas white."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = to_8bit(image)
    elif image.mode == "La":  # grey with premultiplied alpha (TIFF): pillow converts it to LA only
        image = image.convert("LA")
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    # As CLIP's preprocessing does: any other mode (grey, palette, CMYK, with alpha) goes through
    # RGBA onto a white background, so transparent areas are white, not their hidden colour; so does
    # an RGB PNG's transparent colour key, which that preprocessing leaves as its colour.
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float grey as 8-bit grey ("LA" if a PNG's tRNS makes one value transparent)."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        grey = (values >> 8).astype(np.uint8)  # the 16-bit range onto the 8-bit one
    else:
        # "I" and "F" say no range (pillow widens 16-bit signed, 32-bit and float TIFF samples to them),
        # so the image's own range is spread over 0-255: nothing is lost to white or black.
        finite = np.nan_to_num(values.astype(np.float32), nan=0, posinf=0, neginf=0)
        lo, hi = float(finite.min()), float(finite.max())
        grey = np.rint((finite - lo) * (255 / (hi - lo)) if hi > lo else np.clip(finite, 0, 255)).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        return Image.fromarray(np.dstack([grey, np.where(values == transparent, 0, 255).astype(np.uint8)]), "LA")
    return Image.fromarray(grey, "L")


def resized(width: int, height: int, config: ImageConfig) -> tuple[int, int]:
    """The size the resize makes: the short side at `shortest_edge`, the long one in proportion."""
    short, long = sorted((width, height))
    new_long = int(config.shortest_edge * long / short)
    return (config.shortest_edge, new_long) if width <= height else (new_long, config.shortest_edge)


def resize_and_crop(image: Image.Image, config: ImageConfig) -> np.ndarray:
    """uint8 [crop_h, crop_w, 3]: the short side resized to `shortest_edge`, then the centre crop."""
    pixels = np.asarray(image.resize(resized(*image.size, config), resample=config.resample))
    crop_h, crop_w = config.crop
    h, w = pixels.shape[:2]
    if h < crop_h or w < crop_w:  # a tiny image: pad with zeros round it, as transformers' centre crop does
        padded = np.zeros((max(h, crop_h), max(w, crop_w), 3), dtype=np.uint8)
        top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
        padded[top : top + h, left : left + w] = pixels
        pixels, h, w = padded, padded.shape[0], padded.shape[1]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return pixels[top : top + crop_h, left : left + crop_w]


def prepare(blobs: list, config: ImageConfig) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """uint8 [n_good, h, w, 3], the input index of each, and (index, reason) for each bad one."""
    good, rows, errors = [], [], []
    for i, blob in enumerate(blobs):
        try:
            good.append(resize_and_crop(decode(blob, config), config))
            rows.append(i)
        except BadImage as e:
            errors.append((i, str(e)))
    pixels = np.stack(good) if good else np.zeros((0, *config.crop, 3), dtype=np.uint8)
    return pixels, np.asarray(rows, dtype=np.int64), errors


def normalize(pixels: np.ndarray, config: ImageConfig) -> np.ndarray:
    """float32 [n, 3, h, w] as the image tower takes it, from uint8 [n, h, w, 3], in one pass."""
    mean = np.asarray(config.mean, dtype=np.float32) / config.rescale
    scale = np.asarray(config.rescale / np.asarray(config.std), dtype=np.float32)
    return np.ascontiguousarray(((pixels.astype(np.float32) - mean) * scale).transpose(0, 3, 1, 2))


ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey image
