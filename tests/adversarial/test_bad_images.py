"""Hostile and awkward image files, through the public API: each bad one is a row error with a reason
saying what to fix, the good ones in the same call still come back, each at its own index; the
awkward-but-valid ones (16-bit, palette, alpha, EXIF-rotated, multi-frame) come back as a viewer shows them.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from conftest import encoded
from PIL import Image, PngImagePlugin

from actors.images import ImageConfig, prepare
from rayembed import Embedder

CONFIG = ImageConfig(shortest_edge=64, crop=(64, 64))  # random_clip's preprocessor_config


def photo(width: int = 96, height: int = 72, seed: int = 0) -> Image.Image:
    """An asymmetric RGB image (gradients plus noise): any flip or turn changes its pixels."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 40, (height, width, 3))
    rgb = np.stack([x * 200 // width, y * 200 // height, (x * y) % 97], axis=-1) + noise
    return Image.fromarray(rgb.astype(np.uint8))


GOOD = [encoded(photo(seed=1)), encoded(photo(120, 80, seed=2), "JPEG", quality=90)]


def prepared(blob: bytes, config: ImageConfig = CONFIG) -> np.ndarray:
    """The one image's uint8 [h, w, 3], asserting it came back."""
    pixels, rows, errors = prepare([blob], config)
    assert errors == [] and rows.tolist() == [0]
    return pixels[0]


def among_good(blob: bytes, config: ImageConfig = CONFIG) -> tuple[np.ndarray | None, str | None]:
    """prepare([good, blob, good]): the good ones back at 0 and 2 with their own pixels; blob's pixels or reason."""
    pixels, rows, errors = prepare([GOOD[0], blob, GOOD[1]], config)
    kept = rows.tolist()
    assert kept in ([0, 1, 2], [0, 2]), kept
    assert (pixels[0] == prepared(GOOD[0], config)).all() and (pixels[-1] == prepared(GOOD[1], config)).all()
    if kept == [0, 2]:
        assert [i for i, _ in errors] == [1] and errors[0][1]
        return None, errors[0][1]
    assert errors == []
    return pixels[1], None


def bad_reason(blob: bytes, config: ImageConfig = CONFIG) -> str:
    pixels, reason = among_good(blob, config)
    assert reason is not None, "the bad image came back as pixels"
    return reason


def good_pixels(blob: bytes, config: ImageConfig = CONFIG) -> np.ndarray:
    pixels, reason = among_good(blob, config)
    assert reason is None, reason
    return pixels


def tiff_tag(blob: bytes, tag: int, kind: int, value: bytes) -> bytes:
    """A little-endian TIFF (as pillow writes it) with one IFD entry's type and 4-byte value replaced."""
    out = bytearray(blob)
    ifd = struct.unpack("<I", out[4:8])[0]
    for k in range(struct.unpack("<H", out[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", out[entry : entry + 2])[0] == tag:
            out[entry + 2 : entry + 4] = struct.pack("<H", kind)
            out[entry + 8 : entry + 12] = value
            return bytes(out)
    raise KeyError(tag)


# Size: the resize must never be asked for more than the pixel limit.

@pytest.mark.parametrize("size", [(10_000_000, 1), (1, 10_000_000), (2100, 100)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_an_extreme_aspect_ratio_is_refused_before_the_resize(size):
    blob = encoded(Image.new("1", size), "PNG")  # 10,000,000x1 is 1.3 KB
    assert "aspect-ratio limit" in bad_reason(blob)


def test_an_image_whose_resize_would_pass_the_pixel_limit_is_refused():
    tall = encoded(photo(100, 1900))  # 19:1, 190k pixels: within both input limits
    assert good_pixels(tall).shape == (64, 64, 3)
    huge_edge = ImageConfig(shortest_edge=2100, crop=(64, 64))  # 2100x39900 = 84M pixels after the resize
    assert "resized to 2100x39900 is over the 64,000,000-pixel limit" in bad_reason(tall, huge_edge)


# Modes: 16-bit and wider pixels keep their tones; transparency is white.

GREY = np.tile(np.arange(256, dtype=np.uint16), (64, 1))  # every 8-bit tone, 64 x 256


@pytest.mark.parametrize("fmt,dtype", [("PNG", "<u2"), ("TIFF", "<u2"), ("TIFF", ">u2")], ids=["png", "tiff", "tiff-big-endian"])
def test_16_bit_grey_keeps_its_tones_instead_of_clipping_to_white(fmt, dtype):
    sixteen = encoded(Image.fromarray((GREY * 257).astype(dtype)), fmt)  # 0..65535
    assert Image.open(io.BytesIO(sixteen)).mode.startswith("I;16")
    assert (good_pixels(sixteen) == prepared(encoded(Image.fromarray(GREY.astype(np.uint8))))).all()


def test_16_bit_grey_png_with_a_transparent_value_is_white_there_only():
    values = (GREY * 257).astype(np.uint16)
    sixteen = encoded(Image.fromarray(values), "PNG", transparency=100 * 257)
    eight = encoded(Image.fromarray(GREY.astype(np.uint8)), "PNG", transparency=100)
    assert (good_pixels(sixteen) == prepared(eight)).all()


@pytest.mark.parametrize("values", [GREY.astype(np.int32) * 65793, GREY.astype(np.float32) / 255, GREY.astype(np.float32)],
                         ids=["int32", "float-0-1", "float-0-255"])
def test_32_bit_and_float_grey_are_spread_over_their_own_range(values):
    wide = encoded(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(wide)).mode in ("I", "F")
    assert (good_pixels(wide) == prepared(encoded(Image.fromarray(GREY.astype(np.uint8))))).all()


def transparent_corner() -> tuple[Image.Image, np.ndarray]:
    """An RGB image with its top-left quarter to be transparent, and that quarter's mask."""
    image = photo(64, 64)
    mask = np.zeros((64, 64), dtype=bool)
    mask[:32, :32] = True
    return image, mask


def rgba_reference(image: Image.Image, mask: np.ndarray) -> bytes:
    rgba = np.dstack([np.asarray(image), np.where(mask, 0, 255).astype(np.uint8)])
    return encoded(Image.fromarray(rgba, "RGBA"))


def test_an_rgb_png_transparent_colour_key_is_white_like_alpha():
    image, mask = transparent_corner()
    rgb = np.asarray(image).copy()
    rgb[mask] = (1, 2, 3)
    rgb[~mask & (rgb == (1, 2, 3)).all(axis=-1)] = (4, 5, 6)
    keyed = encoded(Image.fromarray(rgb), "PNG", transparency=(1, 2, 3))
    assert (good_pixels(keyed) == prepared(rgba_reference(Image.fromarray(rgb), mask))).all()


def test_palette_images_with_a_transparent_index_are_white_there():
    image, mask = transparent_corner()
    palette = image.quantize(255)  # indices 0..254; 255 is the transparent one
    indices = np.asarray(palette).copy()
    indices[mask] = 255
    p = Image.fromarray(indices, "P")
    p.putpalette((palette.getpalette() + [0] * 768)[:768])
    reference = prepared(rgba_reference(p.convert("RGB"), mask))
    for fmt in ("PNG", "GIF"):
        assert (good_pixels(encoded(p, fmt, transparency=255)) == reference).all(), fmt


def test_grey_with_premultiplied_alpha_tiff_is_converted_not_a_crash():
    grey = np.asarray(photo(64, 64).convert("L")).copy()
    alpha = np.where(transparent_corner()[1], 0, 255).astype(np.uint8)
    grey[alpha == 0] = 0  # premultiplied: nothing under full transparency
    la = Image.fromarray(np.dstack([grey, alpha]), "LA")
    premultiplied = tiff_tag(encoded(la, "TIFF"), 338, 3, struct.pack("<HH", 1, 0))  # ExtraSamples: associated alpha
    assert Image.open(io.BytesIO(premultiplied)).mode == "La"
    assert (good_pixels(premultiplied) == prepared(encoded(la))).all()


# EXIF orientation: followed, as a viewer shows the photo (transformers' CLIPImageProcessor ignores it).

# The EXIF spec's meaning of each Orientation value, as the array turn that shows the stored pixels upright.
UPRIGHT = {
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),  # "rotate 90 CW": a phone held upright
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def with_orientation(image: Image.Image, fmt: str, orientation: int, **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, fmt, exif=exif, **options)


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_a_jpeg_with_exif_orientation_prepares_as_the_upright_photo(orientation):
    stored = with_orientation(photo(), "JPEG", orientation, quality=95)
    as_stored = np.asarray(Image.open(io.BytesIO(stored)))  # the JPEG's own pixels, as decoded
    upright = encoded(Image.fromarray(np.ascontiguousarray(UPRIGHT[orientation](as_stored))))
    assert (good_pixels(stored) == prepared(upright)).all()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_followed_in_every_format_that_carries_it(fmt):
    image = photo()
    stored = with_orientation(image, fmt, 6, **({"lossless": True} if fmt == "WEBP" else {}))
    upright = encoded(Image.fromarray(np.ascontiguousarray(UPRIGHT[6](np.asarray(image)))))
    assert (good_pixels(stored) == prepared(upright)).all()


def test_transformers_processor_ignores_exif_orientation_where_we_follow_it():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    stored = with_orientation(photo(), "PNG", 6)
    plain = encoded(photo())
    theirs = [processor(images=[Image.open(io.BytesIO(b))], return_tensors="np")["pixel_values"] for b in (stored, plain)]
    assert np.array_equal(theirs[0], theirs[1])  # transformers: the stored pixels, sideways
    assert not np.array_equal(prepared(stored), prepared(plain))  # rayembed: the photo turned upright


def test_a_large_exif_rotated_jpeg_is_downscaled_while_decoding_and_upright():
    from actors.images import decode

    big = photo(3200, 2400)
    stored, plain = with_orientation(big, "JPEG", 6, quality=90), encoded(big, "JPEG", quality=90)
    image = decode(stored, CONFIG)
    assert image.size[1] > image.size[0] and image.size[1] < 3200 / 4 and min(image.size) >= 64  # portrait, 1/8 scale
    turned = UPRIGHT[6](prepared(plain)).astype(int)  # a square crop: turning it commutes with the crop
    assert np.abs(good_pixels(stored).astype(int) - turned).max() <= 3  # resize rounding only


def test_a_large_mpo_phone_photo_is_downscaled_while_decoding():
    from actors.images import decode

    buffer = io.BytesIO()
    photo(2400, 3200).save(buffer, "MPO", save_all=True, append_images=[photo(640, 480)])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    image = decode(buffer.getvalue(), CONFIG)
    assert image.size[0] < 2400 / 4 and min(image.size) >= 64  # drafted as a JPEG is


def test_a_photo_whose_exif_pillow_cannot_rewrite_is_still_turned_upright():
    tags = Image.Exif()
    tags[0x0112], tags[0x011A] = 6, 72.0
    exif = bytearray(tags.tobytes())
    k = exif.index(b"\x01\x1a\x00\x05")  # XResolution, RATIONAL -> ASCII "72": ImageOps.exif_transpose raises on it
    exif[k : k + 12] = b"\x01\x1a\x00\x02" + struct.pack(">I", 4) + b"72\x00\x00"
    image = photo()
    stored = encoded(image, "PNG", exif=bytes(exif))
    upright = encoded(Image.fromarray(np.ascontiguousarray(UPRIGHT[6](np.asarray(image)))))
    assert (good_pixels(stored) == prepared(upright)).all()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_image_with_unreadable_exif_comes_back_as_stored(fmt):
    image = photo()
    stored = encoded(image, fmt, exif=b"not a TIFF header at all", **({"lossless": True} if fmt == "WEBP" else {}))
    assert (good_pixels(stored) == prepared(encoded(image))).all()


# Formats: an allow-list; pillow's other parsers never see the bytes.

def other_format(fmt: str) -> bytes:
    if fmt == "EPS":  # pillow would hand this to Ghostscript where it is installed
        return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
    if fmt == "PSD":
        return b"8BPS\x00\x01" + bytes(20)
    return encoded(photo(16, 16), fmt)


@pytest.mark.parametrize("fmt", ["EPS", "PSD", "ICO", "PPM", "PCX", "SGI", "QOI", "DDS", "JPEG2000", "AVIF"])
def test_a_format_outside_the_allow_list_is_refused_by_name(fmt):
    assert bad_reason(other_format(fmt)) == f"format {fmt} is not accepted; send JPEG, PNG, WEBP, GIF, BMP or TIFF"


def test_pillows_eps_parser_never_runs(monkeypatch):
    from PIL import EpsImagePlugin

    def parsed(self):
        raise AssertionError("pillow's EPS parser ran on untrusted bytes")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", parsed)
    assert "not accepted" in bad_reason(other_format("EPS"))


def test_a_pdf_or_unknown_bytes_say_what_to_send():
    pdf = io.BytesIO()
    photo(16, 16).save(pdf, "PDF")
    for blob in (pdf.getvalue(), b"<html><body>not an image</body></html>"):
        reason = bad_reason(blob)
        assert "cannot decode image" in reason and reason.endswith("send JPEG, PNG, WEBP, GIF, BMP or TIFF"), reason


def flat(colour: tuple, spot: tuple) -> Image.Image:
    """Two colours only, so every format (GIF's 256 included) keeps them exactly."""
    image = Image.new("RGB", (96, 72), colour)
    image.paste(spot, (10, 10, 40, 30))
    return image


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP", "PNG"])
def test_an_animation_or_multi_page_file_is_its_first_frame(fmt):
    first, second = flat((200, 30, 30), (250, 250, 0)), flat((20, 40, 220), (0, 0, 0))
    options = {"lossless": True} if fmt == "WEBP" else {}
    blob = encoded(first, fmt, save_all=True, append_images=[second], **options)
    assert getattr(Image.open(io.BytesIO(blob)), "n_frames", 1) == 2
    assert (good_pixels(blob) == prepared(encoded(first))).all()


# Malformed files whose errors pillow raises as ValueError or TypeError, not OSError.

def short_png_header() -> bytes:
    png = bytearray(encoded(photo(8, 8)))
    png[8:12] = struct.pack(">I", 12)  # IHDR is 13 bytes
    return bytes(png)


def png_text_bomb() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "0" * 2_000_000, zip=True)  # 2 KB that inflate past pillow's 1 MB text limit
    return encoded(photo(8, 8), "PNG", pnginfo=info)


def tiff_float_width() -> bytes:
    return tiff_tag(encoded(photo(8, 8), "TIFF"), 256, 11, struct.pack("<f", 8.0))


def tiff_float_strip_offset() -> bytes:
    blob = encoded(photo(8, 8), "TIFF")
    return tiff_tag(blob, 273, 11, struct.pack("<f", Image.open(io.BytesIO(blob)).tag_v2[273][0]))


@pytest.mark.parametrize("make", [short_png_header, png_text_bomb, tiff_float_width, tiff_float_strip_offset],
                         ids=lambda f: f.__name__)
def test_a_malformed_file_pillow_fails_with_value_or_type_error_is_an_error_row(make):
    assert bad_reason(make()).startswith("cannot decode image: ")


# Both doors go through the engine: one call with every kind of bad image among good ones.

def test_the_engine_answers_each_bad_image_in_a_mixed_call_at_its_own_index(random_clip, sample_images):
    embedder = Embedder(random_clip["spec"], precision="fp32")
    good = [sample_images["gradient.png"], sample_images["shapes.jpg"], sample_images["alpha.png"]]
    sideways = with_orientation(photo(), "PNG", 6)
    blobs = [good[0], encoded(Image.new("1", (10_000_000, 1))), good[1], other_format("EPS"), short_png_header(),
             encoded(Image.fromarray((GREY * 257).astype(np.uint16))), tiff_float_strip_offset(), sideways, good[2]]
    pixels, rows, errors = embedder.prepare_images(blobs)
    assert rows.tolist() == [0, 2, 5, 7, 8]
    reasons = {e.index: e.reason for e in errors}
    assert sorted(reasons) == [1, 3, 4, 6]
    assert "aspect-ratio" in reasons[1] and "format EPS is not accepted" in reasons[3]
    assert reasons[4].startswith("cannot decode image") and reasons[6].startswith("cannot decode image")
    alone = [embedder.prepare_images([blobs[i]])[0][0] for i in rows]
    assert all((pixels[k] == alone[k]).all() for k in range(len(rows)))
    vectors = embedder.embed_pixels(pixels)
    assert np.allclose(vectors, embedder.embed_images([blobs[i] for i in rows.tolist()]), atol=1e-6)
