"""Adversarial corpora through the offline job: every bad row an error row with its id and reason,
the job goes on, and every good row comes out exactly once.

One job reads a folder holding one file per kind of trouble; each test below checks one of them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.embed_corpus import main as embed_corpus

CPU_FLAGS = ["--precision", "fp32", "--gpus-per-actor", "0", "--cpus-per-actor", "1", "--max-actors", "1"]


def jsonl(path: Path, rows: list, raw: list[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in raw))


@pytest.fixture(scope="module")
def bad_corpus(ray_cluster, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad-corpus")
    corpus = root / "corpus"
    # An escaped lone surrogate is valid JSON but no text: that line fails, its neighbours do not.
    jsonl(corpus / "surrogate.jsonl", [{"id": "s-1", "text": "before"}], ['{"id": "s-2", "text": "\\ud800"}'])
    (corpus / "surrogate.jsonl").write_text((corpus / "surrogate.jsonl").read_text() + '{"id": "s-3", "text": "after"}\n')
    # Ids that are objects, lists and numbers.
    jsonl(corpus / "odd-ids.jsonl", [{"id": {"doc": 1}, "text": "an object id"}, {"id": [1, 2], "text": "a list id"},
                                     {"id": 7, "text": "a number id"}])
    pq.write_table(pa.table({"id": pa.array([{"doc": 1, "part": "a"}, {"doc": 2, "part": "b"}]),
                             "text": ["struct id one", "struct id two"]}), corpus / "struct-ids.parquet")
    # Binary ids: one good, one not UTF-8 (a bad row on its own, and the id of a row that is bad anyway).
    pq.write_table(pa.table({"id": pa.array([b"bin-1", b"\xff\xfe", b"\xfa"], pa.binary()),
                             "text": ["binary id", "undecodable id", None]}), corpus / "binary-ids.parquet")
    # Empty and odd files.
    (corpus / "empty.jsonl").write_bytes(b"")
    (corpus / "empty.csv").write_bytes(b"")
    (corpus / "header-only.csv").write_text("id,text\n")
    (corpus / "extra-field.csv").write_text('id,text\nc-1,fine\nc-2,"one, quoted",extra\nc-3,"two\nlines"\n')
    (corpus / "pretty.json").write_text(json.dumps([{"id": "p-1", "text": "pretty one"}, {"id": "p-2", "text": "pretty two"}],
                                                   indent=2))
    # A later file without the text column: its rows are errors, the other files are embedded.
    jsonl(corpus / "zz-no-text.jsonl", [{"id": "n-1", "body": "wrong column"}])
    pq.write_table(pa.table({"id": ["q-1"], "body": ["wrong column"]}), corpus / "zz-no-text.parquet")
    # TSV, with a header, gzipped.
    (corpus / "with-header.tsv.gz").write_bytes(gzip.compress(b"id\ttext\nt-1\ttab one\nt-2\ttab\ttwo\nt-3\ttab three\n"))
    # Hidden at any depth: Spark's _temporary, a .staging folder; never read.
    jsonl(corpus / "_temporary" / "0" / "part-0.jsonl", [{"id": "hidden-1", "text": "never"}])
    jsonl(corpus / "sub" / ".staging" / "x.jsonl", [{"id": "hidden-2", "text": "never"}])
    jsonl(corpus / "sub" / "visible.jsonl", [{"id": "v-1", "text": "seen"}])
    out = corpus / "out"  # the output inside the input folder: never read back as input
    code = embed_corpus([str(corpus), str(out), *CPU_FLAGS])
    second = embed_corpus([str(corpus), str(out), *CPU_FLAGS])
    errors = pq.read_table(out / "_errors").to_pylist()
    return {"code": (code, second), "vectors": pq.read_table(out), "errors": errors,
            "manifest": json.loads((out / "_manifest.json").read_text()), "corpus": corpus}


def errors_of(bad_corpus: dict, name: str) -> list[dict]:
    return [e for e in bad_corpus["errors"] if e["input"].endswith(name)]


def ids(bad_corpus: dict) -> list[str]:
    return bad_corpus["vectors"]["id"].to_pylist()


def test_the_job_goes_on_and_every_good_row_comes_out_once(bad_corpus):
    assert bad_corpus["code"] == (0, 0)
    assert len(ids(bad_corpus)) == len(set(ids(bad_corpus)))
    assert set(ids(bad_corpus)) == {"s-1", "s-3", '{"doc":1}', "[1,2]", "7", '{"doc":1,"part":"a"}', '{"doc":2,"part":"b"}',
                                    "bin-1", "c-1", "c-3", "p-1", "p-2", "t-1", "t-3", "v-1"}


def test_a_lone_surrogate_fails_its_line_only(bad_corpus):
    [error] = errors_of(bad_corpus, "surrogate.jsonl")
    assert error["reason"].startswith("invalid Unicode") and error["byte_offset"] > 0


def test_ids_that_are_not_strings_are_written_as_their_json_text(bad_corpus):
    assert bad_corpus["vectors"].schema.field("id").type == pa.string()
    assert {'{"doc":1}', "[1,2]", "7", '{"doc":1,"part":"a"}'} <= set(ids(bad_corpus))


def test_a_binary_id_that_is_not_utf8_is_a_bad_row(bad_corpus):
    reasons = sorted(e["reason"] for e in errors_of(bad_corpus, "binary-ids.parquet"))
    assert reasons == ["id is not UTF-8: b'\\xfa'", "id is not UTF-8: b'\\xff\\xfe'"]


def test_empty_files_are_inputs_without_rows(bad_corpus):
    inputs = {Path(i["path"]).name: i for i in bad_corpus["manifest"]["inputs"].values()}
    for name in ("empty.jsonl", "empty.csv", "header-only.csv"):
        assert inputs[name]["complete"] and not errors_of(bad_corpus, name)


def test_a_csv_row_with_an_extra_field_is_a_bad_row(bad_corpus):
    [error] = errors_of(bad_corpus, "extra-field.csv")
    assert "3 fields where the header has 2" in error["reason"]
    assert {"c-1", "c-3"} <= set(ids(bad_corpus))


def test_a_pretty_printed_json_array_is_read(bad_corpus):
    assert {"p-1", "p-2"} <= set(ids(bad_corpus))


def test_columns_are_checked_in_every_file(bad_corpus):
    [line] = errors_of(bad_corpus, "zz-no-text.jsonl")
    assert line["id"] == "n-1" and line["reason"].startswith("null")
    [parquet] = errors_of(bad_corpus, "zz-no-text.parquet")
    assert "has no column ['text']" in parquet["reason"]


def test_a_tsv_row_with_a_tab_too_many_is_a_bad_row(bad_corpus):
    [error] = errors_of(bad_corpus, "with-header.tsv.gz")
    assert error["reason"] == "3 tab-separated fields where the header has 2"


def test_hidden_folders_and_the_output_are_never_read(bad_corpus):
    assert not {"hidden-1", "hidden-2"} & set(ids(bad_corpus))
    assert not any("/out/" in i["path"] for i in bad_corpus["manifest"]["inputs"].values())
    assert bad_corpus["manifest"]["counts"]["embedded"] == len(ids(bad_corpus))  # the second run did not read the first's


def test_reserved_names_in_keep_are_refused_before_any_work(ray_cluster, tmp_path, capsys):
    jsonl(tmp_path / "c.jsonl", [{"id": "1", "text": "x", "embedding": "theirs"}])
    assert embed_corpus([str(tmp_path / "c.jsonl"), str(tmp_path / "out"), "--keep", "embedding", *CPU_FLAGS]) == 2
    assert "--keep embedding: the output has its own column of that name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_msmarco_style_tsv_without_a_header(ray_cluster, tmp_path):
    (tmp_path / "collection.tsv").write_text("0\tThe first passage.\n1\tThe second passage.\n2\n")
    out = tmp_path / "out"
    assert embed_corpus([str(tmp_path / "collection.tsv"), str(out), "--columns", "id,text", *CPU_FLAGS]) == 0
    assert sorted(pq.read_table(out)["id"].to_pylist()) == ["0", "1"]
    [error] = pq.read_table(out / "_errors").to_pylist()
    assert error["reason"] == "1 tab-separated fields where the header has 2"
    # Without --columns its first line is taken for a header: the job says what to give.
    assert embed_corpus([str(tmp_path / "collection.tsv"), str(tmp_path / "o2"), *CPU_FLAGS]) == 2


def test_s3_image_folders_keep_their_subfolders_in_ids(bucket):
    from actors.storage import write_bytes
    from jobs.sources import list_images

    for name in ("cats/1.jpg", "dogs/1.jpg", "_thumbs/1.jpg"):
        write_bytes(f"{bucket}/images/{name}", b"not decoded here")
    assert [i for i, _ in list_images(f"{bucket}/images")] == ["cats/1.jpg", "dogs/1.jpg"]

