"""Dataset readers: every source gives the same frame; bad sources fail with the file named."""
import json
import logging

import pandas as pd
import pytest

from pipelines.datasets import (
    COLUMNS,
    DatasetError,
    check_photos,
    count_untagged,
    parse_tags,
    read_dataset,
    read_manifest,
    read_mirflickr,
    read_subset,
    split_ids,
)


def _mirflickr(tmp_path, tags_by_id):
    root = tmp_path / "mirflickr"
    (root / "meta" / "tags").mkdir(parents=True)
    for n, tags in tags_by_id.items():
        (root / f"im{n}.jpg").write_bytes(b"x")
        (root / "meta" / "tags" / f"tags{n}.txt").write_text("\n".join(tags) + ("\n" if tags else ""))
    return root


def test_mirflickr_layout(tmp_path, caplog):
    root = _mirflickr(tmp_path, {2: ["sea", "beach"], 10: ["dog"], 1: []})
    ann = tmp_path / "mirflickr25k_annotations_v080"
    ann.mkdir()
    (ann / "sea.txt").write_text("2\n")
    (ann / "sea_r1.txt").write_text("2\n10\n")  # stricter variant: not a label of its own
    (ann / "dog.txt").write_text("10\n")
    with caplog.at_level(logging.WARNING):
        frame = read_dataset(tmp_path)  # finds the mirflickr/ folder inside
    assert list(frame.columns) == COLUMNS
    assert list(frame["id"]) == ["1", "2", "10"]  # numeric order, not string order
    assert frame.set_index("id").loc["2", "tags"] == ["sea", "beach"]
    assert frame.set_index("id").loc["10", "labels"] == ["dog"]
    assert frame.set_index("id").loc["1", "labels"] == []
    assert count_untagged(frame) == 1
    assert "1 of 3 photos have no tags" in caplog.text
    assert frame["path"].map(lambda p: p.endswith(".jpg")).all()
    assert read_mirflickr(root).equals(frame)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="meta/tags"):
        read_mirflickr(tmp_path)
    with pytest.raises(DatasetError, match="not a dataset folder"):
        read_dataset(tmp_path)


def test_subset_jsonl(tmp_path):
    recs = [
        {"id": 1, "file": "images/im1.jpg", "tags": ["a", "b"], "labels24": ["sky"]},
        {"id": 5, "file": "images/im5.jpg", "tags": ["c"], "labels24": None},
    ]
    (tmp_path / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    frame = read_subset(tmp_path)
    assert list(frame["id"]) == ["1", "5"]
    assert frame["labels"].tolist() == [["sky"], None]
    assert frame["path"][0] == str(tmp_path / "images/im1.jpg")
    (tmp_path / "annotations.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(DatasetError, match=r"annotations.jsonl:1"):
        read_subset(tmp_path)


def test_csv_and_parquet_give_the_same_frame(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text('path,tags\nphotos/a.jpg,"sea, beach"\n/abs/b.jpg,dog\nc.jpg,\n')
    a = read_manifest(csv)
    table = pd.DataFrame({"path": ["photos/a.jpg", "/abs/b.jpg", "c.jpg"], "tags": [["sea", "beach"], ["dog"], []]})
    table.to_parquet(tmp_path / "m.parquet")
    b = read_dataset(tmp_path / "m.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert a["path"][0] == str(tmp_path / "photos" / "a.jpg")
    assert a["path"][1] == "/abs/b.jpg"
    assert a["tags"].tolist() == [["sea", "beach"], ["dog"], []]


def test_manifest_errors_name_the_problem(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("path,tags\n")
    with pytest.raises(DatasetError, match="empty.csv: manifest has no rows"):
        read_manifest(empty)
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(DatasetError, match="blank.csv"):
        read_manifest(blank)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("file,words\na.jpg,x\n")
    with pytest.raises(DatasetError, match="nocol.csv: no tags column"):
        read_manifest(nocol)
    with pytest.raises(DatasetError, match="no column 'keywords'"):
        read_manifest(nocol, tags_column="keywords")
    assert read_manifest(nocol, tags_column="words")["tags"].tolist() == [["x"]]


def test_missing_photos_are_counted_and_all_missing_is_an_error(tmp_path, caplog):
    (tmp_path / "a.jpg").write_bytes(b"x")
    csv = tmp_path / "m.csv"
    csv.write_text("path,tags\na.jpg,sea\ngone.jpg,dog\n")
    frame = read_manifest(csv)  # the readers only parse: a missing photo is still a row
    assert len(frame) == 2
    with caplog.at_level(logging.WARNING):
        assert check_photos(frame, csv) == 1
    assert f"m.csv: 1 of 2 photos are missing (e.g. {tmp_path / 'gone.jpg'}); they are skipped" in caplog.text
    (tmp_path / "a.jpg").unlink()
    with pytest.raises(DatasetError, match=r"m.csv: none of its 2 photos exist \(e.g. .*a.jpg\); relative paths"):
        check_photos(frame, csv)


@pytest.mark.parametrize(
    "cell, tags",
    [
        ('["a", "b c"]', ["a", "b c"]),
        ("a;b", ["a", "b"]),
        ("a | b", ["a", "b"]),
        ("a b  c", ["a", "b", "c"]),
        ("", []),
        (None, []),
        (float("nan"), []),
    ],
)
def test_parse_tags(cell, tags):
    assert parse_tags(cell) == tags


def test_split_is_deterministic_and_by_id():
    ids = [str(i) for i in range(5000)]
    s = split_ids(ids, (0.8, 0.1, 0.1), seed=0)
    assert s.tolist() == split_ids(ids, seed=0).tolist()
    # Same photo, same split, whatever else is in the collection or its order.
    assert split_ids(ids[::-1], seed=0).tolist() == s.tolist()[::-1]
    assert split_ids(ids[:100], seed=0).tolist() == s.tolist()[:100]
    shares = s.value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.03 and abs(shares["test"] - 0.1) < 0.03
    assert split_ids(ids, seed=1).tolist() != s.tolist()
    with pytest.raises(ValueError):
        split_ids(ids, (0.5, 0.1, 0.1))


@pytest.mark.data
def test_real_subset(subset_dir):
    frame = read_dataset(subset_dir)
    assert len(frame) == 10710
    assert count_untagged(frame) == 0
    first = frame.iloc[0]
    assert first["id"] == "1" and "cigarette" in first["tags"] and "portrait" in first["labels"]
    assert all(__import__("os").path.exists(p) for p in frame["path"].head(50))
    assert frame["labels"].isna().sum() > 0  # photos outside the 20,015 set have no labels
