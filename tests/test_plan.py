"""The plan both engines share (tagger.library.plan.decide): which photos a run reads, tags and keeps."""
import pyarrow as pa
import pytest

from tagger.library.plan import UNKNOWN, common_prefix, decide, latest_rows, listing_table, tails


def rows(paths, sizes, mtimes, settings="s", hashes=None, errors=None) -> pa.Table:
    n = len(paths)
    return pa.table({"path": paths, "hash": hashes or [f"h{p}" for p in paths], "settings": [settings] * n,
                     "error": errors or [""] * n, "size": sizes, "mtime": mtimes})


def test_a_listing_without_mtime_is_hashed_though_its_size_matches():
    """An object store's listing may give no modification time (UNKNOWN, as the row keeps it): size alone is no quick
    check, so the photo is read and hashed; with both known and equal it is not read."""
    listing = listing_table(["s3://b/a.jpg", "s3://b/b.jpg"], [(10, UNKNOWN), (20, 5)])
    read = []

    def hash_photos(todo):
        read.extend(todo["key"].to_pylist())
        return [f"h{k}" for k in todo["key"].to_pylist()]

    decision = decide(listing, rows(["s3://b/a.jpg", "s3://b/b.jpg"], [10, 20], [UNKNOWN, 5]), hash_photos, "s")
    assert read == ["s3://b/a.jpg"] and decision.hashed == 1
    assert decision.todo.num_rows == 0 and decision.kept == 2  # the same hash: kept


def test_a_photos_last_row_is_its_latest():
    """Rows of several runs: the last row of a photo decides (its settings here), whichever came first."""
    previous = rows(["a", "b", "a"], [1, 2, 1], [1, 2, 1]).set_column(2, "settings", pa.array(["old", "s", "s"]))
    decision = decide(listing_table(["a", "b"], [(1, 1), (2, 2)]), previous, lambda t: pytest.fail("nothing to read"), "s")
    assert decision.todo.num_rows == 0 and decision.retag == 0
    assert list(latest_rows(pa.chunked_array([["a", "b"], ["a", "x"]]), pa.array(["a", "z", "b"]))) == [2, -1, 1]


def test_the_rows_hashes_are_read_only_when_a_photo_needs_one():
    """A rerun with nothing to do never reads the hash column (64 characters a photo); a photo to tag again does."""
    previous = rows(["a", "b"], [1, 2], [1, 2]).drop_columns(["hash"])
    asked = []

    def old_hashes():
        asked.append(True)
        return pa.chunked_array([["ha", "hb"]])

    listing = listing_table(["a", "b"], [(1, 1), (2, 2)])
    assert decide(listing, previous, lambda t: [], "s", old_hashes=old_hashes).kept == 2 and not asked
    retag = decide(listing, previous, lambda t: [], "new settings", old_hashes=old_hashes)
    assert asked and retag.todo["hash"].to_pylist() == ["ha", "hb"] and retag.retag == 2


def test_a_manifest_lists_a_photo_once(tmp_path):
    from tagger.library.ray_engine import list_photos

    (tmp_path / "list.csv").write_text("path\na.jpg\nb.jpg\na.jpg\n")
    photos, _ = list_photos(tmp_path / "list.csv")
    assert photos["key"].to_pylist() == [f"{tmp_path}/a.jpg", f"{tmp_path}/b.jpg"]


def test_paths_are_matched_on_what_follows_the_listings_common_start():
    """An archive's keys share a long start; rows are matched on the rest. A row outside that start is no photo's, a
    key is found in any hash table of its part of the keys, and a dictionary-encoded column (the ray engine reads
    settings and errors so) decides as its text would."""
    keys = pa.chunked_array([["/mnt/a/2019/x.jpg", "/mnt/a/2019/y.jpg"], ["/mnt/a/2020/z.jpg"]])
    assert common_prefix(keys) == "/mnt/a/20" and common_prefix(pa.array([], pa.string())) == ""
    paths = pa.array(["/mnt/a/2020/z.jpg", "/mnt/a/2019/x.jpg", "/mnt/b/2019/x.jpg", "/mnt/a/2020/z.jpg", "/mnt/a/2019/x.jpgg"])
    where = latest_rows(tails(paths, "/mnt/a/20"), tails(keys, "/mnt/a/20"))
    assert list(where) == [1, -1, 3]  # "/mnt/b/2019/x.jpg" (the same 9 characters on) is not x.jpg's row
    assert [list(latest_rows(paths, keys, step=s)) for s in (1, 2, 3)] == [[1, -1, 3]] * 3
    previous = rows(["/mnt/a/2019/x.jpg", "/mnt/a/2019/y.jpg", "/mnt/a/2020/z.jpg"], [1, 2, 3], [1, 2, 3])
    coded = previous.set_column(2, "settings", pa.array(["s", None, "old"]).dictionary_encode()) \
        .set_column(3, "error", pa.array(["", "bad", None]).dictionary_encode())
    listing = listing_table(keys.to_pylist(), [(1, 1), (2, 2), (3, 3)])
    for table, prefix in ((coded, ""), (coded.set_column(0, "path", tails(coded["path"], "/mnt/a/20")), "/mnt/a/20")):
        decision = decide(listing, table, lambda t: [], "s", old_hashes=lambda: previous["hash"], prefix=prefix)
        # y failed before (retried), z was made with other settings (tagged again); x is kept
        assert decision.todo["key"].to_pylist() == ["/mnt/a/2019/y.jpg", "/mnt/a/2020/z.jpg"] and decision.retag == 1


def test_a_scope_covers_the_keys_under_its_folders_as_they_print(tmp_path):
    """What a run answers for: the rows under its folders (as the keys print them, relative ones under "."), no other."""
    from tagger.library.plan import Scope

    (tmp_path / "2019").mkdir()
    (tmp_path / "2019" / "a.jpg").write_bytes(b"x")
    scope = Scope.of([tmp_path / "2019", tmp_path / "2019" / "a.jpg"])  # a photo given as a file adds no folder
    assert scope.folders == (f"{tmp_path}/2019/",)
    paths = pa.array([f"{tmp_path}/2019/a.jpg", f"{tmp_path}/2019/sub/b.jpg", f"{tmp_path}/2019b/c.jpg", f"{tmp_path}/2020/d.jpg",
                      None, "2019/a.jpg"])
    assert scope.covers(paths).tolist() == [True, True, False, False, False, False]
    here = Scope.of(["."])
    assert here.covers(pa.array(["a.jpg", "sub/b.jpg", "/abs/c.jpg", "s3://b/d.jpg"])).tolist() == [True, True, False, False]
    assert not Scope().covers(paths).any()  # a manifest's: none beyond its photos


def test_latest_rows_flags_every_row_of_a_listed_photo():
    import numpy as np

    paths = pa.array(["a", "b", "a", "c", None])
    found = np.zeros(len(paths), bool)
    assert latest_rows(paths, pa.array(["a", "c"]), step=1, rows_found=found).tolist() == [2, 3]
    assert found.tolist() == [True, False, True, True, False]
