"""The offline job's settings, read once from the command line and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from actors.catalog import ModelSpec

ROWS_PER_PART = 4096


@dataclass(frozen=True)
class JobConfig:
    input: str
    output: str
    model: ModelSpec
    id_column: str = "id"
    text_column: str = "text"
    # With a CLIP model: the column of image bytes or paths/URIs to embed instead of text (an image
    # folder as INPUT sets it to "image" and `id` to the path under the folder).
    image_column: str | None = None
    keep: tuple[str, ...] = ()
    precision: str = "auto"
    kind: str = "passage"
    min_actors: int | None = None
    max_actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float | None = None
    batch_tokens: int | None = None
    resume: bool = False
    address: str | None = None
    s3_endpoint: str | None = None
    # Rows per device actor call and at most per output file: the unit a retried task redoes.
    rows_per_part: int = ROWS_PER_PART

    def __post_init__(self) -> None:
        if self.id_column == self.text_column:
            raise ValueError("--id-column and --text-column must name different columns")
        if self.rows_per_part <= 0:
            raise ValueError("--rows-per-part must be positive")
        if self.image_column and self.model.modality != "clip":
            raise ValueError(f"--image-column needs a CLIP model; {self.model.name} embeds text only")
