"""Scanning a library: photos chosen, NAS clutter left out, and every file not taken counted by reason."""
import os

from pipelines.scan import EXCLUDED_DIR, HIDDEN, LINK_OUT, METADATA, NOT_REGULAR, OTHER, RAW, scan


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


def test_a_folder_link_is_followed_only_inside_the_folders_scanned(tmp_path):
    lib, drive = tmp_path / "lib", tmp_path / "drive"
    a = touch(lib / "2020" / "a.jpg")
    touch(drive / "b.jpg")
    os.symlink(lib / "2020", lib / "also2020")  # inside: the same folder, walked once
    os.symlink(drive, lib / "drive")  # out of the library: its sidecars would be written on the drive
    os.symlink("/", lib / "everything")
    favourite = lib / "fav.jpg"
    os.symlink(drive / "b.jpg", favourite)  # a photo that is a link is read; its sidecar goes beside the link
    found = scan([lib])
    assert found.photos == [a, favourite]
    assert found.skipped == {LINK_OUT: 2} and found.examples[LINK_OUT].endswith("drive")
    # Named as a folder to scan, the drive is the user's to ask for; so is a link given as the library itself.
    assert scan([lib, drive]).photos == sorted([a, favourite, lib / "drive" / "b.jpg"])  # the drive walked once, through the link
    os.symlink(lib, tmp_path / "Pictures")
    assert scan([tmp_path / "Pictures"]).photos == [tmp_path / "Pictures" / "2020" / "a.jpg", tmp_path / "Pictures" / "fav.jpg"]
