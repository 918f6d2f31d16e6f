"""Scanning a library: photos chosen, NAS clutter left out, and every file not taken counted by reason."""
import os

from pipelines.scan import EXCLUDED_DIR, HIDDEN, METADATA, NOT_REGULAR, OTHER, RAW, scan


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_scan_counts_what_it_skips(tmp_path):
    photos = [touch(tmp_path / p) for p in ["2019/a.JPG", "2019/b.heic", "2020/c.webp", "2020/sub/d.tiff"]]
    for p in ["2020/@eaDir/c.webp/SYNOPHOTO_THUMB_XL.jpg", ".thumbnails/large/x.png", "#recycle/old.jpg", "2020/._c.webp",
              "2020/IMG_1.CR2", "2020/IMG_2.dng", "2019/a.JPG.xmp", "2020/notes.txt", "2020/clip.mov"]:
        touch(tmp_path / p)
    os.mkfifo(tmp_path / "2020" / "fifo.jpg")
    os.symlink("/dev/zero", tmp_path / "2020" / "zero.jpg")
    found = scan([tmp_path])
    assert found.photos == sorted(photos)
    assert found.skipped == {EXCLUDED_DIR: 3, HIDDEN: 1, RAW: 2, METADATA: 2, OTHER: 1, NOT_REGULAR: 2}
    assert found.examples[RAW].endswith("IMG_1.CR2")
    assert any(line.startswith("3 excluded folder (e.g. ") for line in found.describe())


def test_exclude_globs_and_named_files(tmp_path):
    keep = touch(tmp_path / "lib" / "2019" / "a.jpg")
    touch(tmp_path / "lib" / "Exports" / "a-small.jpg")
    one = touch(tmp_path / "elsewhere" / "b.png")
    found = scan([tmp_path / "lib", one, one], exclude_dirs=("Export*",))
    assert found.photos == sorted([keep, one]) and found.skipped == {EXCLUDED_DIR: 1}
    # A named file that is missing is kept: tagging reports it under its name.
    assert scan([tmp_path / "gone.jpg"]).photos == [tmp_path / "gone.jpg"]
