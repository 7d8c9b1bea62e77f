"""Images to model input, with pillow and numpy, as a CLIP model's preprocessor_config.json says.

Decode (downscaled while decoding where pillow can: JPEG `draft`), RGB, resize the shortest side,
centre crop: that runs in CPU tasks and gives uint8 [n, h, w, 3], a quarter of the float32 bytes, to
carry to the device. Rescale and mean/std normalisation are one vectorised step next to the device.
A file that cannot be decoded, is truncated, or has more pixels than MAX_PIXELS is an error value
with a reason, never an exception that stops a batch.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

PREPROCESSOR_FILE = "preprocessor_config.json"
# Decompression-bomb guard: pillow's own default (89M) warns and 2x that raises; we refuse above this.
MAX_PIXELS = 64_000_000
MAX_BYTES = 50 * 1024 * 1024


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
    """An RGB image at least `shortest_edge` on its short side, or BadImage saying why not."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadImage(f"not image bytes ({type(data).__name__})")
    if len(data) == 0:
        raise BadImage("empty file")
    if len(data) > MAX_BYTES:
        raise BadImage(f"file of {len(data):,} bytes is over the {MAX_BYTES:,}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise BadImage(f"{width}x{height} pixels is over the {MAX_PIXELS:,}-pixel limit (decompression bomb?)")
            # JPEG can decode at 1/2, 1/4 or 1/8 scale: far less work for a large photo, and the
            # result is still at least the size the resize needs.
            scale = config.shortest_edge / min(width, height)
            if image.format == "JPEG" and scale < 0.5:
                image.draft("RGB", (int(width * scale) + 1, int(height * scale) + 1))
            image.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"too many pixels (decompression bomb?): {e}") from None
    except (OSError, SyntaxError, Image.UnidentifiedImageError) as e:
        raise BadImage(f"cannot decode image: {e}") from None
    if image.mode == "RGB":
        return image
    # As CLIP's preprocessing does: any other mode (grey, palette, CMYK, with alpha) goes through
    # RGBA onto a white background, so transparent areas are white, not their hidden colour.
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


def resize_and_crop(image: Image.Image, config: ImageConfig) -> np.ndarray:
    """uint8 [crop_h, crop_w, 3]: the short side resized to `shortest_edge`, then the centre crop."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(config.shortest_edge * long / short)
    size = (config.shortest_edge, new_long) if width <= height else (new_long, config.shortest_edge)
    pixels = np.asarray(image.resize(size, resample=config.resample))
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
