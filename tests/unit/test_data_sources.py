"""Raw inputs: file formats, compression, document splitting and one-line errors."""

from __future__ import annotations

import gzip

import pytest

from nextlat_pt.data import sources
from nextlat_pt.data.errors import DataError
from nextlat_pt.data.sources import DocumentReader, expand_inputs, iter_lines
from nextlat_pt.data.synthetic import write_jsonl

DOCS = ["first doc\r\nwith CRLF\n", "  indented\n\ttab \u65e5\u672c \u00e9", "x"]


def _read(paths, **kw) -> list[str]:
    return list(DocumentReader(paths, **kw))


@pytest.mark.parametrize("name", ["d.jsonl", "d.ndjson", "d.jsonl.gz", "d.jsonl.zst"])
def test_jsonl_formats_give_the_exact_texts(tmp_path, name):
    path = write_jsonl(tmp_path / name, DOCS)
    assert _read([path]) == DOCS


def test_text_field_and_empty_documents(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["a", "", "b"], field="content")
    reader = DocumentReader([path], text_field="content")
    assert list(reader) == ["a", "b"]
    assert (reader.documents, reader.empty_skipped) == (2, 1)


def test_txt_splits(tmp_path):
    text = "line one\nline two\n\n\npara two\r\nstill two\n  \nlast"
    (tmp_path / "t.txt").write_bytes(text.encode())
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(text.encode()))
    for name in ("t.txt", "t.txt.gz"):
        path = tmp_path / name
        assert _read([path]) == [text]  # a whole file is one document by default
        assert _read([path], txt_split="line") == [
            "line one", "line two", "para two\r", "still two", "  ", "last"]
        assert _read([path], txt_split="paragraph") == [
            "line one\nline two", "para two\r\nstill two", "last"]


def test_iter_lines_are_the_tokenizer_sentences():
    assert list(iter_lines(iter(["a\n\nb", "c\n"]))) == ["a", "b", "c"]


def test_expand_inputs_globs_directories_and_order(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.jsonl", "sub/skip.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    got = expand_inputs([str(tmp_path / "*.txt"), tmp_path / "sub", tmp_path / "a.txt"])
    assert [p.name for p in got] == ["a.txt", "b.txt", "c.jsonl"]  # a.txt once


@pytest.mark.parametrize("make, pattern", [
    (lambda d: None, "missing.txt"),
    (lambda d: None, "nothing-*.jsonl"),
    (lambda d: (d / "x.parquet").write_text("x"), "x.parquet"),
    (lambda d: (d / "empty").mkdir(), "empty"),
])
def test_expand_inputs_errors(tmp_path, make, pattern):
    make(tmp_path)
    with pytest.raises(DataError) as err:
        expand_inputs([str(tmp_path / pattern)])
    msg = str(err.value)
    assert "\n" not in msg and pattern.split("*")[0] in msg
    with pytest.raises(DataError, match="no inputs"):
        expand_inputs([])


def test_bad_json_and_missing_field_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        _read([bad])
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(DataError, match=r"nofield\.jsonl:1: no field 'text' \(found \['body', "
                                        r"'id'\]\); pass --text-field"):
        _read([nofield])
    notstr = tmp_path / "notstr.jsonl"
    notstr.write_text('{"text": 5}\n')
    with pytest.raises(DataError, match="is a int, not a string"):
        _read([notstr])


def test_damaged_compressed_files_are_named(tmp_path):
    good = gzip.compress(b'{"text": "a"}\n' * 1000)
    (tmp_path / "cut.jsonl.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cannot read input .*cut\.jsonl\.gz: .*damaged"):
        _read([tmp_path / "cut.jsonl.gz"])
    zst = write_jsonl(tmp_path / "full.jsonl.zst", [f"doc {i}" for i in range(5000)])
    assert len(_read([zst])) == 5000
    (tmp_path / "cut.jsonl.zst").write_bytes(zst.read_bytes()[:-4])  # quietly short otherwise
    with pytest.raises(DataError, match=r"cut\.jsonl\.zst: zstd stream ended .*truncated"):
        _read([tmp_path / "cut.jsonl.zst"])
    (tmp_path / "junk.jsonl.zst").write_bytes(b"this is not zstd at all")
    with pytest.raises(DataError, match=r"cannot read input .*junk\.jsonl\.zst"):
        _read([tmp_path / "junk.jsonl.zst"])


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.txt"
    path.write_text("x")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sources, "open", denied, raising=False)
    with pytest.raises(DataError, match=r"cannot read input .*secret\.txt: Permission denied"):
        _read([path])
    with pytest.raises(DataError, match=r"secret\.txt: Permission denied; fix its permissions"):
        sources.describe_sources([path])
