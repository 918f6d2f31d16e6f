"""`tagger train`'s preparation: more tag lists for word2vec from a corpus, never the dataset's own photos'."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import TINY_TAGS, make_photo_files
from pipelines.datasets import DatasetError, read_tag_lists
from tagger.cli import app
from tagger.training.fit import FitConfig, extra_tag_lists, prepare


def test_tag_lists_read_from_tsv_and_csv(tmp_path):
    tsv = tmp_path / "tags_corpus.tsv"
    tsv.write_text("id\ttags\n1\tsea beach sand\n2\t\n3\tdog\n", encoding="utf-8")
    table = read_tag_lists(tsv)
    assert table["id"].tolist() == ["1", "2", "3"] and table["tags"].tolist() == [["sea", "beach", "sand"], [], ["dog"]]
    csv = tmp_path / "more.csv"
    pd.DataFrame({"photo_id": [7], "keywords": ["cat;kitten"]}).to_csv(csv, index=False)
    assert read_tag_lists(csv)["tags"].tolist() == [["cat", "kitten"]]
    (tmp_path / "bad.tsv").write_text("name\ttags\nx\tsea\n")
    with pytest.raises(DatasetError, match=r"bad.tsv: no id column"):
        read_tag_lists(tmp_path / "bad.tsv")
    with pytest.raises(DatasetError, match="gone.tsv: no such tag-list file"):
        read_tag_lists(tmp_path / "gone.tsv")


def dataset(tmp_path, n=48):
    photos = make_photo_files(tmp_path / "photos", n)
    manifest = tmp_path / "photos" / "m.csv"
    pd.DataFrame({"path": [p.name for p in photos], "tags": [",".join(TINY_TAGS[i % len(TINY_TAGS)]) for i in range(n)]}).to_csv(
        manifest, index=False)
    return manifest, [p.name for p in photos]


def test_corpus_lists_join_word2vec_but_the_datasets_own_photos_do_not(tmp_path):
    manifest, ids = dataset(tmp_path)
    # 300 photos without images; 300 rows carrying dataset photos' ids (they could be held-out photos),
    # which must be left out. "zebra" is no vocabulary word (the vocabulary is the training photos').
    extra = [(f"extra{i}", "cat winter sky zebra") for i in range(300)]
    ours = [(ids[i % len(ids)], "dog city street") for i in range(300)]
    base = FitConfig(backbone="tiny", min_count=1, cache_dir=tmp_path / "cache", num_workers=0)

    def run(rows, name):
        corpus = tmp_path / name
        pd.DataFrame(rows, columns=["id", "tags"]).to_csv(corpus, sep="\t", index=False)
        return prepare(manifest, replace(base, corpus=corpus), progress=False)

    plain = prepare(manifest, base, progress=False)
    mixed = run(extra + ours, "mixed.tsv")
    assert plain.corpus_lists == 0 and mixed.corpus_lists == 300
    lists = extra_tag_lists(tmp_path / "mixed.tsv", mixed.frame, mixed.vocabulary, progress=False)
    assert sorted(map(sorted, lists)) == [["cat", "sky", "winter"]] * 300
    wv0, wv1 = plain.word_vectors, mixed.word_vectors
    assert "zebra" not in wv1 and list(wv0.words) == list(wv1.words)
    assert not np.allclose(wv0.vectors, wv1.vectors)  # the corpus reached word2vec
    # Rows of the dataset's own photos alone change nothing: word2vec sees the same lists as without them.
    assert run(ours, "ours.tsv").corpus_lists == 0
    assert np.array_equal(run(ours, "ours.tsv").word_vectors.vectors, wv0.vectors)
    # The same rows under ids that are not the dataset's do count.
    assert run([(f"other{i}", t) for i, (_, t) in enumerate(ours)], "others.tsv").corpus_lists == 300


def test_train_refuses_a_bad_corpus_in_one_line(tmp_path):
    manifest, _ = dataset(tmp_path, 8)
    bad = tmp_path / "corpus.tsv"
    bad.write_text("name\ttags\nx\tsea\n")
    result = CliRunner().invoke(app, ["train", str(manifest), "--out", str(tmp_path / "model"), "--backbone", "tiny",
                                      "--min-count", "1", "--corpus", str(bad), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.splitlines()[-1].startswith(f"tagger: error: {bad}: no id column"), result.output
    assert not (tmp_path / "model").exists()
