"""CLIP-style models: images and text into one space, through the same engine.

No pretrained CLIP weights can be had on these machines, so these tests build a small CLIP with
random weights (the names say so), export it with rayembed's own exporter, and check rayembed's
vectors, preprocessing included, against `transformers`' own `get_image_features` /
`get_text_features` on real images made with pillow.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import encoded
from PIL import Image

from rayembed import Embedder


def reference_images(random_clip, blobs: list[bytes]) -> np.ndarray:
    import torch

    pixels = random_clip["processor"](images=[Image.open(io.BytesIO(b)) for b in blobs], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = random_clip["model"].get_image_features(pixel_values=pixels)
    out = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def reference_texts(random_clip, texts: list[str]) -> np.ndarray:
    import torch
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(random_clip["folder"] / "tokenizer.json"))
    tokenizer.enable_padding()
    tokenizer.enable_truncation(77)
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    with torch.no_grad():
        out = random_clip["model"].get_text_features(input_ids=ids, attention_mask=mask)
    out = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_random_weight_clip_images_match_transformers_with_preprocessing(random_clip, sample_images):
    embedder = Embedder(random_clip["spec"], precision="fp32")
    images = sample_images
    vectors = embedder.embed_images(list(images.values()))
    expected = reference_images(random_clip, list(images.values()))
    cosines = (vectors * expected).sum(axis=1)
    assert cosines.min() >= 0.9999, dict(zip(images, cosines.round(5)))
    assert vectors.shape == (len(images), 32)


def test_random_weight_clip_texts_match_transformers_and_share_the_space(random_clip, sample_images):
    embedder = Embedder(random_clip["spec"], precision="fp32")
    texts = ["a red circle and a blue square", "a plot of throughput against GPUs", "x"]
    vectors = embedder.embed(texts)
    assert (vectors * reference_texts(random_clip, texts)).sum(axis=1).min() >= 0.9999
    image = embedder.embed_images([sample_images["shapes.jpg"]])
    assert image.shape[1] == vectors.shape[1]  # one space: comparable by cosine


def test_bad_images_are_errors_with_reasons_and_the_rest_embed(random_clip, sample_images):
    embedder = Embedder(random_clip["spec"], precision="fp32")
    good = sample_images["gradient.png"]
    truncated = encoded(Image.new("RGB", (400, 300), (9, 9, 9)), "JPEG")[:300]
    bomb = encoded(Image.new("1", (9000, 9000)), "PNG")  # 81M pixels in a few kB
    blobs = [good, b"not an image at all", truncated, bomb, b"", good]
    pixels, rows, errors = embedder.prepare_images(blobs)
    assert rows.tolist() == [0, 5]
    reasons = {e.index: e.reason for e in errors}
    assert "cannot decode" in reasons[1]
    assert "cannot decode" in reasons[2] or "truncated" in reasons[2]
    assert "pixel limit" in reasons[3]
    assert reasons[4] == "empty file"
    with pytest.raises(ValueError, match="4 of 6 images cannot be embedded"):
        embedder.embed_images(blobs)


def test_large_jpeg_is_downscaled_while_decoding():
    from actors.images import ImageConfig, decode

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (2400, 3200, 3), dtype=np.uint8))
    image = decode(encoded(photo, "JPEG"), ImageConfig(shortest_edge=64, crop=(64, 64)))
    assert image.size[0] < 3200 / 4 and min(image.size) >= 64  # JPEG draft: decoded at 1/8 scale


def test_catalogue_clip_names_say_what_to_provide(random_clip, sample_images):
    from actors.catalog import CATALOG

    for name in ("ViT-B/32", "open_clip/ViT-B-32/openai", "onnx16/openai/ViT-L/14", "ViT-B/16"):
        with pytest.raises(ValueError, match="model_location"):
            CATALOG.resolve(name)
    spec = CATALOG.resolve({"name": "ViT-B/32", "model_location": str(random_clip["folder"]), "dimensions": 32})
    assert spec.name == "openai/clip-vit-base-patch32" and spec.is_clip and spec.max_tokens == 77
    with pytest.raises(ValueError, match="text model"):
        Embedder("all-MiniLM-L6-v2", precision="fp32").embed_images([sample_images["gradient.png"]])


def test_image_folder_and_parquet_bytes_jobs_write_vectors_and_errors(ray_cluster, tmp_path, random_clip, sample_images, bucket):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from actors.storage import s3_filesystem
    from jobs.embed_corpus import main as embed_corpus

    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for name, blob in sample_images.items():
        (folder / ("nested" if name.endswith(".jpg") else "") / name).write_bytes(blob)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    model = json.dumps(random_clip["spec"])
    flags = ["--model", model, "--precision", "fp32", "--gpus-per-actor", "0", "--cpus-per-actor", "1", "--rows-per-part", "4"]
    assert embed_corpus([str(folder), str(tmp_path / "out"), *flags]) == 0
    out = pq.read_table(tmp_path / "out").sort_by("id")
    expected_ids = sorted(("nested/" if n.endswith(".jpg") else "") + n for n in sample_images)
    assert out["id"].to_pylist() == expected_ids
    embedder = Embedder(random_clip["spec"], precision="fp32")
    files = [(folder / i).read_bytes() for i in expected_ids]
    vectors = np.asarray(out["embedding"].combine_chunks().values).reshape(len(files), -1)
    assert (vectors * embedder.embed_images(files)).sum(axis=1).min() >= 0.9999
    errors = pq.read_table(tmp_path / "out" / "_errors").to_pylist()
    assert [(e["id"], "cannot decode" in e["reason"]) for e in errors] == [("broken.png", True)]

    # A Parquet column of image bytes, in S3, through the same s3:// path a user's bucket takes.
    table = pa.table({"id": ["a", "b", "c"], "image": [sample_images["alpha.png"], b"garbage", sample_images["cmyk.jpg"]]})
    with s3_filesystem().open(f"{bucket[5:]}/corpus/images.parquet", "wb") as fh:
        pq.write_table(table, fh)
    assert embed_corpus([f"{bucket}/corpus/", f"{bucket}/out/", "--image-column", "image", *flags]) == 0
    fs = s3_filesystem()
    parts = [p for p in fs.find(f"{bucket[5:]}/out") if p.endswith(".parquet") and "/_errors/" not in p]
    written = pa.concat_tables(pq.read_table(fs.open(p, "rb")) for p in parts).sort_by("id")
    assert written["id"].to_pylist() == ["a", "c"]
    vectors = np.asarray(written["embedding"].combine_chunks().values).reshape(2, -1)
    expected = embedder.embed_images([sample_images["alpha.png"], sample_images["cmyk.jpg"]])
    assert (vectors * expected).sum(axis=1).min() >= 0.9999
