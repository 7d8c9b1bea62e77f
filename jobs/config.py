"""The offline job's settings, read once from the command line and passed down."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from actors.catalog import ModelSpec
from actors.devices import Backend, Precision
from actors.errors import UserError
from actors.quantize import EMBEDDING_TYPES, NEEDS_RANGES, EmbeddingType
from actors.spec import TRUNCATABLE_TASKS, TRUNCATES, Truncate
from jobs.sources import UNIT_BYTES

ROWS_PER_PART = 4096


@dataclass(frozen=True)
class JobConfig:
    input: str
    output: str
    model: ModelSpec
    id_column: str = "id"
    text_column: str = "text"
    # A reranker's job scores (query, text) pairs: the column of the queries.
    query_column: str = "query"
    # With a CLIP model: the column of image bytes or paths/URIs to embed instead of text (an image
    # folder as INPUT sets it to "image" and `id` to the path under the folder).
    image_column: str | None = None
    keep: tuple[str, ...] = ()
    # A TSV without a header (MS MARCO's collection.tsv): its columns, in order.
    columns: tuple[str, ...] | None = None
    # "auto" until the pool is planned: `settled` turns them into the one backend and precision
    # every stage uses.
    precision: Precision | Literal["auto"] = "auto"
    backend: Backend | Literal["auto"] = "auto"
    # At most one of the three: which prompt goes before each text (ModelSpec.prompt); none: the model's default.
    input_type: str | None = None
    prompt_name: str | None = None
    prompt: str | None = None
    min_actors: int | None = None
    max_actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    device_batch_tokens: int | None = None
    resume: bool = False
    address: str | None = None
    s3_endpoint: str | None = None
    # Rows per device actor call and at most per output file: the unit a retried task redoes.
    rows_per_part: int = ROWS_PER_PART
    # Bytes of a large input per read task (jobs/sources.py).
    read_bytes: int = UNIT_BYTES
    # How the `embedding` column is written (actors/quantize.py; dense models only), and for int8/uint8
    # where the ranges come from: a .npy of [2, dim] ranges or a text file of calibration texts (a
    # local path), replacing the catalogue's.
    embedding_type: EmbeddingType = "float"
    calibration: str | None = None
    # A text over the model's max tokens: cut at its END (sentence-transformers' way), cut its START
    # (keeps the end of the text), or NONE (the row goes to _errors/ with its token count).
    truncate: Truncate = "END"

    def __post_init__(self) -> None:
        if self.id_column == self.text_column:
            raise UserError("--id-column and --text-column must name different columns")
        from actors.blocks import RESERVED  # here, not above: `rayembed --help` must not load the tokenizer

        reserved = [c for c in self.keep if c in RESERVED]
        if reserved:
            raise UserError(f"--keep {' '.join(reserved)}: the output has its own column of that name; keep other columns")
        if self.columns is not None and (self.id_column not in self.columns or self.text_column not in self.columns):
            raise UserError(f"--columns {','.join(self.columns)} must name the id column {self.id_column!r} and the "
                            f"text column {self.text_column!r}")
        if self.read_bytes <= 0:
            raise UserError("--read-bytes must be positive")
        if self.rows_per_part <= 0:
            raise UserError("--rows-per-part must be positive")
        if self.image_column and not self.model.is_clip:
            raise UserError(f"--image-column needs a CLIP model; {self.model.name} embeds text only")
        self.model.prompt(self.input_type, self.prompt_name, self.prompt)  # a prompt the model lacks stops the job here
        self._check_embedding_type()
        self._check_truncate()

    def _check_embedding_type(self) -> None:
        kind, spec = self.embedding_type, self.model
        if kind not in EMBEDDING_TYPES:
            raise UserError(f"--embedding-type must be one of {', '.join(EMBEDDING_TYPES)}, got {kind!r}")
        if kind != "float" and spec.task != "embed":
            raise UserError(f"--embedding-type {kind} is for dense models; {spec.name} is a {spec.task} model, whose "
                            "output stays as it is (leave --embedding-type at float)")
        if self.calibration and kind not in NEEDS_RANGES:
            raise UserError(f"--calibration gives the ranges of int8 and uint8 vectors; this job writes {kind} ones "
                            "(add --embedding-type int8 or uint8, or leave --calibration out)")
        if kind in NEEDS_RANGES and not self.calibration and not spec.quantization_ranges:
            raise UserError(f"--embedding-type {kind} needs calibration ranges, and {spec.name} has none in the "
                            "catalogue: give --calibration PATH (a text file of representative texts, or a .npy of ranges)")

    def _check_truncate(self) -> None:
        if self.truncate not in TRUNCATES:
            raise UserError(f"--truncate must be one of {', '.join(TRUNCATES)}, got {self.truncate!r}")
        if self.truncate == "END":
            return
        if self.image_column:
            raise UserError(f"--truncate {self.truncate}: images are not truncated; leave --truncate at END")
        if self.model.task not in TRUNCATABLE_TASKS:
            how = {"late_interaction": "a ColBERT model's texts are cut at their end",
                   "rerank": "a reranker's (query, text) pairs are cut from the longer side",
                   "bm25": "BM25 takes texts of any length"}.get(self.model.task, "")
            raise UserError(f"--truncate {self.truncate} is not for {self.model.name} ({self.model.task}): {how}; "
                            "leave --truncate at END")

    @property
    def prompt_used(self) -> tuple[str | None, str]:
        """(the prompt's name, its text) that goes before every text of this job."""
        return self.model.prompt(self.input_type, self.prompt_name, self.prompt)

    def settled(self, on_gpus: bool) -> JobConfig:
        """This config with its backend and precision chosen for the devices the pool runs on (a CPU
        pool's choice is made for the driver's CPU features: give --backend on a mixed cluster)."""
        from actors.embedder import settle

        if self.model.task == "bm25":  # no model to run: CPU tasks compute it
            return self
        backend, precision, _ = settle(self.model, self.backend, self.precision, "cuda" if on_gpus else "cpu")
        return replace(self, backend=backend, precision=precision)
