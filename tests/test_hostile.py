"""Hostile photo folders: every odd file a real folder holds gives tags or one line naming it, never a traceback.

The corpus is generated into tmp_path by the `hostile` fixture (nothing is committed): broken files,
every common format and mode, a decompression bomb, an unreadable file, a symlink loop, a
non-UTF-8 file name and a name with spaces, a progressive-JPEG scan bomb.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipelines.images import MAX_PIXELS, ImageError, load_image
from pipelines.scan import list_images
from tagger.cli import app
from test_decode_limits import scan_bomb_jpeg

runner = CliRunner()
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root reads a mode-000 file anyway


@dataclass
class Corpus:
    root: Path
    good: dict[str, Path] = field(default_factory=dict)  # kind -> a file that must be tagged
    bad: dict[str, Path] = field(default_factory=dict)  # kind -> a file that must fail with one line
    loop: Path | None = None  # the directory symlink that points back up

    @property
    def files(self) -> dict[str, Path]:
        return {**self.good, **self.bad}


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose IHDR declares width x height (the CRC fixed), so only the header is huge."""
    data = bytearray(_png_bytes(Image.new("L", (8, 8), 128)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def make_hostile_corpus(root: Path) -> Corpus:
    c = Corpus(root)
    root.mkdir(parents=True, exist_ok=True)
    sub = root / "sub"
    sub.mkdir()

    def good(kind: str, name: str, write) -> None:
        p = root / name
        write(p)
        c.good[kind] = p

    def bad(kind: str, name: str, data: bytes) -> None:
        p = root / name
        p.write_bytes(data)
        c.bad[kind] = p

    jpeg = _jpeg_bytes(_rgb(64, 48))
    bad("truncated_jpeg", "truncated.jpg", jpeg[: len(jpeg) // 2])
    bad("zero_byte", "empty.jpg", b"")
    bad("text_as_jpg", "notes.jpg", b"shopping list: eggs, milk\n" * 4)
    bad("bomb", "bomb.png", bomb_png())
    bad("scan_bomb", "scans.jpg", scan_bomb_jpeg(repeats=1000))  # 1,006 scans of 256x256 in 35 KB

    good("png", "plain.png", lambda p: _rgb(40, 30).save(p))
    good("gif", "still.gif", lambda p: _rgb(40, 30).convert("P").save(p))

    def animated(p):
        frames = []
        for seed, color in enumerate(("red", "green", "blue")):
            frame = Image.new("RGB", (32, 24), color)
            frame.paste(_rgb(16, 24, seed), (16, 0))  # half of each frame a scene: one colour all over is a blank frame
            frames.append(frame.convert("P"))
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)

    good("animated_gif", "animated.gif", animated)
    good("webp", "photo.webp", lambda p: _rgb(40, 30).save(p, "WEBP"))
    good("tiff", "scan.tiff", lambda p: _rgb(40, 30).save(p, "TIFF"))
    good("cmyk_jpeg", "print.jpg", lambda p: _rgb(40, 30).convert("CMYK").save(p, "JPEG"))
    gradient16 = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    good("png16", "deep.png", lambda p: Image.fromarray(gradient16).save(p))

    def palette_transparent(p):
        im = Image.new("P", (16, 16), 0)
        im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        im.paste(1, (0, 0, 8, 16))  # left half red, right half index 0 = transparent
        im.save(p, transparency=0)

    good("palette_transparent", "palette.png", palette_transparent)

    def rgba(p):
        a = np.zeros((16, 16, 4), dtype=np.uint8)
        a[..., 2] = 255
        a[:, :8, 3] = 255  # opaque blue left half, fully transparent right half
        Image.fromarray(a, "RGBA").save(p)

    good("rgba", "alpha.png", rgba)

    def rotated(p):
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 CW to view
        _rgb(40, 20).save(p, "JPEG", exif=exif.tobytes())

    good("exif_rotated", "phone.jpg", rotated)
    good("one_pixel", "dot.png", lambda p: Image.new("RGB", (1, 1), "white").save(p))
    good("spaces", "my holiday photo 01.jpg", lambda p: _rgb(32, 32, 1).save(p))
    good("in_subfolder", "sub/nested.jpg", lambda p: _rgb(32, 32, 2).save(p))

    # A non-UTF-8 file name (Latin-1 e-acute): made from bytes, as a camera card from an old OS might hold.
    raw = os.path.join(os.fsencode(root), b"caf\xe9.jpg")
    try:
        with open(raw, "wb") as f:
            f.write(_jpeg_bytes(_rgb(32, 32, 3)))
        c.good["non_utf8_name"] = Path(os.fsdecode(raw))
    except (OSError, UnicodeError):  # a filesystem that insists on UTF-8 names
        pass

    unreadable = root / "locked.jpg"
    unreadable.write_bytes(_jpeg_bytes(_rgb(32, 32, 4)))
    unreadable.chmod(0)
    # Root reads it anyway: then it is just one more photo.
    (c.good if IS_ROOT else c.bad)["unreadable"] = unreadable

    c.loop = sub / "loop"
    c.loop.symlink_to("..", target_is_directory=True)  # sub/loop -> root: a walk that follows it never ends
    return c


@pytest.fixture
def hostile(tmp_path) -> Corpus:
    c = make_hostile_corpus(tmp_path / "hostile")
    yield c
    (c.root / "locked.jpg").chmod(0o644)  # let pytest clean up


def shown(path) -> str:
    """How the CLI prints a path: a non-UTF-8 name's bytes as \\xNN escapes (caf\\xe9.jpg)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _no_traceback(result):
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in text, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# -- (a) tagger predict over every file ------------------------------------------------------------


def test_predict_every_hostile_file(hostile, tiny_bundle):
    files = hostile.files
    args = ["predict", *[str(p) for p in files.values()], str(hostile.loop), "--model", str(tiny_bundle)]
    result = runner.invoke(app, args)
    _no_traceback(result)
    assert result.exit_code == 1, result.output
    out, err = result.stdout.splitlines(), result.stderr.splitlines()
    for kind, path in hostile.good.items():
        mine = [l for l in out if l.startswith(f"{shown(path)}: ")]
        assert len(mine) == 1, (kind, out, err)
        if kind == "one_pixel":  # white all over: a blank frame, with no tags and the reason (not an error)
            assert mine[0].endswith(": (no tags: near-white frame)"), mine
            continue
        assert len(mine[0].split(": ", 1)[1].split(", ")) == 3, (kind, mine)  # top_k 3 tags with scores
    for kind, path in {**hostile.bad, "symlink_dir": hostile.loop}.items():
        mine = [l for l in err if l.startswith(f"tagger: error: {shown(path)}: ")]
        assert len(mine) == 1, (kind, err)
        assert len(mine[0]) > len(f"tagger: error: {path}: "), kind  # a reason follows
    assert len(out) == len(hostile.good) and len(err) == len(hostile.bad) + 1


def test_predict_json_keeps_going_after_bad_files(hostile, tiny_bundle):
    import json

    paths = list(hostile.files.values())
    result = runner.invoke(app, ["predict", *map(str, paths), "--model", str(tiny_bundle), "--json"])
    _no_traceback(result)
    assert result.exit_code == 1
    recs = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(recs) == {shown(p) for p in paths}
    for kind, p in hostile.good.items():
        blank = kind == "one_pixel"
        assert recs[shown(p)]["error"] == "" and len(recs[shown(p)]["tags"]) == (0 if blank else 3)
        assert recs[shown(p)]["note"] == ("no tags: near-white frame" if blank else "")
    for p in hostile.bad.values():
        assert recs[shown(p)]["error"] and recs[shown(p)]["tags"] == []


# -- (b) tagger tag over the folder ----------------------------------------------------------------


def test_tag_hostile_folder(hostile, tiny_bundle, tmp_path):
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["tag", str(hostile.root), "--out", str(out), "--model", str(tiny_bundle)])
    _no_traceback(result)
    assert result.exit_code == 1, result.output  # photos failed in this run: listed, and the exit code says so
    n_good, n_bad = len(hostile.good), len(hostile.bad)
    assert f"{n_good} tagged, 0 unchanged (kept), {n_bad} failed" in result.stdout, result.output
    failed_lines = [l for l in result.stderr.splitlines() if l.startswith("tagger: failed: ")]
    assert len(failed_lines) == n_bad
    assert len(result.stderr.splitlines()) == 1 + n_bad, result.stderr  # the plan line, then one line per failure only
    failures = pd.read_csv(tmp_path / "out.csv.failed.tsv", sep="\t", keep_default_na=False)
    assert sorted(failures["path"]) == sorted(shown(p) for p in hostile.bad.values()) and failures["error"].all()
    assert f"{n_bad} failed (listed in {tmp_path / 'out.csv.failed.tsv'})" in result.stdout
    for p in hostile.bad.values():
        assert sum(l.startswith(f"tagger: failed: {shown(p)}: ") for l in failed_lines) == 1, (p, failed_lines)

    rows = pd.read_csv(out, keep_default_na=False)
    assert set(rows.columns) >= {"path", "tags", "scores", "error"}
    # One row per photo file, each once, despite sub/loop pointing back at the root.
    assert len(rows) == len(set(rows["path"])) == n_good + n_bad
    assert set(rows["path"]) == {shown(p) for p in hostile.files.values()}  # caf\xe9.jpg escaped, as printed
    errors = dict(zip(rows["path"], rows["error"]))
    assert all(errors[shown(p)] == "" for p in hostile.good.values())
    assert all(errors[shown(p)] != "" for p in hostile.bad.values())
    assert errors[shown(hostile.bad["bomb"])] == "decompression bomb: 400 MP image is over the 128 MP limit"

    # A second run keeps everything and tries the failures again (they fail again: exit code 1); with
    # --no-retry-failed it re-reports them without trying.
    result = runner.invoke(app, ["tag", str(hostile.root), "--out", str(out), "--model", str(tiny_bundle)])
    _no_traceback(result)
    assert result.exit_code == 1, result.output
    assert f"0 tagged, {n_good} unchanged (kept), {n_bad} failed" in result.stdout
    result = runner.invoke(app, ["tag", str(hostile.root), "--out", str(out), "--model", str(tiny_bundle), "--no-retry-failed"])
    assert result.exit_code == 0, result.output
    assert f"0 tagged, {n_good} unchanged (kept), {n_bad} failed" in result.stdout


def test_list_images_terminates_on_symlink_loop(hostile):
    found = list_images(hostile.root)
    assert len(found) == len(set(found)) == len(hostile.files)


# -- (c) load_image, kind by kind ------------------------------------------------------------------


def test_load_image_bad_kinds(hostile):
    reasons = {}
    for kind, path in hostile.bad.items():
        with pytest.raises(ImageError) as info:
            load_image(path)
        assert info.value.path == str(path) and str(path) in str(info.value)
        assert "\n" not in info.value.reason and info.value.reason
        reasons[kind] = info.value.reason
    # 400 MP is past Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS), which refuses it at open: said in our terms.
    assert reasons["bomb"] == "decompression bomb: 400 MP image is over the 128 MP limit"
    assert reasons["zero_byte"] == "empty file"
    assert reasons["scan_bomb"] == "1006 scans, over the limit of 100: a progressive-JPEG decoding bomb"
    assert "not an image" in reasons["text_as_jpg"]
    assert "truncated" in reasons["truncated_jpeg"]
    if not IS_ROOT:
        assert "cannot read" in reasons["unreadable"]


def test_load_image_good_kinds(hostile):
    for kind, path in hostile.good.items():
        im = load_image(path)
        assert im.mode == "RGB" and im.size[0] >= 1 and im.size[1] >= 1, kind
    g = hostile.good
    assert load_image(g["exif_rotated"]).size == (20, 40)  # 40x20 stored, orientation 6: shown upright
    assert load_image(g["one_pixel"]).size == (1, 1)
    assert load_image(g["animated_gif"]).getpixel((0, 0)) == (255, 0, 0)  # the first frame only

    deep = np.asarray(load_image(g["png16"]))
    assert deep.dtype == np.uint8
    row = deep[0, :, 0]
    assert row[0] <= 2 and row[-1] >= 253 and np.all(np.diff(row.astype(int)) >= 0)  # full range, not clipped at 255
    assert (deep[..., 0] == deep[..., 1]).all() and (deep[..., 1] == deep[..., 2]).all()

    pal = load_image(g["palette_transparent"])
    assert pal.getpixel((2, 2)) == (255, 0, 0) and pal.getpixel((12, 2)) == (255, 255, 255)  # transparency on white
    rgba = load_image(g["rgba"])
    assert rgba.getpixel((2, 2)) == (0, 0, 255) and rgba.getpixel((12, 2)) == (255, 255, 255)

    cmyk = np.asarray(load_image(g["cmyk_jpeg"]), dtype=float)
    ref = np.asarray(_rgb(40, 30), dtype=float)
    assert np.abs(cmyk - ref).mean() < 40  # colours survive the CMYK round trip roughly, not inverted

    assert load_image(g["png"]).size == (40, 30) and load_image(g["webp"]).size == (40, 30)
    assert load_image(g["tiff"]).size == (40, 30)


def test_bomb_between_our_limit_and_pillows_is_refused_by_ours(tmp_path):
    side = 12000  # 144 MP: over MAX_PIXELS (128 MP), under Pillow's hard limit, so our check must catch it
    assert side * side > MAX_PIXELS
    path = tmp_path / "bomb144.png"
    path.write_bytes(bomb_png(side, side))
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert f"{side}x{side}" in info.value.reason and f"{MAX_PIXELS / 1e6:.0f}" in info.value.reason


def test_load_image_bytes_and_directory(hostile):
    with pytest.raises(ImageError, match="is a directory"):
        load_image(hostile.loop)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(bomb_png())
    with pytest.raises(ImageError, match="no such file"):
        load_image(hostile.root / "missing.jpg")


@pytest.mark.skipif(not IS_ROOT, reason="only notes the root case")
def test_unreadable_file_is_readable_as_root(hostile):
    # Running as root: the mode-000 file cannot be made unreadable, so it is tagged like any photo.
    assert load_image(hostile.good["unreadable"]).mode == "RGB"


# -- (d) a file the user may not read, in a real process -----------------------------------------------


def _drop_dac_capabilities() -> None:
    """preexec_fn: this process and what it runs stay root but obey file permissions like any user.

    Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the capability bounding set, so the command
    run next does not get them back; unlike switching to `nobody`, the interpreter and the test's
    files (in root's private folders) stay readable.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _become_nobody() -> None:
    """preexec_fn: run as the unprivileged user `nobody` (65534)."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def _unprivileged(locked: Path):
    """A preexec_fn under which `locked` (mode 000) really cannot be read, or pytest.skip saying why not."""
    import subprocess
    import sys

    if not IS_ROOT:
        return None  # file permissions apply already
    tried = []
    # As `nobody` the interpreter and the project must be readable too, hence the import in that probe.
    for preexec, imports in ((_drop_dac_capabilities, ""), (_become_nobody, "import tagger.model\n")):
        probe = f"import sys\n{imports}try:\n    open(sys.argv[1], 'rb')\nexcept PermissionError:\n    sys.exit(0)\nsys.exit(3)"
        try:
            r = subprocess.run([sys.executable, "-c", probe, str(locked)], preexec_fn=preexec, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            tried.append(f"{preexec.__name__}: {e}")
            continue
        if r.returncode == 0:
            return preexec
        tried.append(f"{preexec.__name__}: exit {r.returncode} {(r.stderr.strip().splitlines() or [''])[-1]}")
    pytest.skip("running as root and cannot drop the right to read any file: " + "; ".join(tried))


# Runs the commands in one process (one start-up instead of three), each as a user would, reporting what they printed.
RUN_COMMANDS = """
import json, logging, sys
from typer.testing import CliRunner
from tagger.cli import app
results = []
for args in json.loads(sys.argv[1]):
    logging.getLogger().handlers.clear()  # each command logs to its own stderr, as in a process of its own
    r = CliRunner().invoke(app, args)
    results.append({"code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr, "exception": repr(r.exception)})
print(json.dumps(results))
"""


@pytest.mark.slow
def test_unreadable_file_is_one_line_in_predict_and_tag(tmp_path):
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    from conftest import build_tiny_tagger
    from tagger.bundle import save

    # A folder every user may enter (tmp_path's parents are private to root), so that `nobody` could work in it.
    base = Path(tempfile.mkdtemp(prefix="tagger-perm-"))
    private = base / "photos" / "private"
    try:
        base.chmod(0o777)
        bundle = save(build_tiny_tagger(), base / "bundle")
        photos = base / "photos"
        photos.mkdir()
        photos.chmod(0o777)
        good = photos / "good.jpg"
        good.write_bytes(_jpeg_bytes(_rgb(32, 32)))
        locked = photos / "locked.jpg"
        locked.write_bytes(_jpeg_bytes(_rgb(32, 32, 4)))
        locked.chmod(0)
        private.mkdir()  # a folder that cannot be listed, with a photo inside
        (private / "hidden.jpg").write_bytes(_jpeg_bytes(_rgb(32, 32, 5)))
        private.chmod(0)
        preexec = _unprivileged(locked)

        out = base / "tags.csv"
        commands = [["predict", good, locked, "--model", bundle],
                    ["tag", photos, "--out", out, "--model", bundle],
                    ["tag", private, "--out", base / "private.csv", "--model", bundle]]  # the whole folder unreadable
        r = subprocess.run([sys.executable, "-c", RUN_COMMANDS, json.dumps([list(map(str, c)) for c in commands])],
                           preexec_fn=preexec, capture_output=True, text=True, timeout=300, cwd=base)
        assert r.returncode == 0, r.stderr[-3000:]
        predict, tag, tag_private = json.loads(r.stdout)
        reason = "cannot read: Permission denied"
        for res in (predict, tag, tag_private):
            assert "Traceback" not in res["stdout"] + res["stderr"] and res["exception"] in ("None", "SystemExit(1)"), res

        assert predict["code"] == 1 and predict["stdout"].startswith(f"{good}: ") and len(predict["stdout"].splitlines()) == 1, predict
        assert predict["stderr"].splitlines() == [f"tagger: error: {locked}: {reason}"], predict

        failed = base / "tags.csv.failed.tsv"
        assert tag["code"] == 1 and tag["stdout"].strip() == f"{out}: 1 tagged, 0 unchanged (kept), 1 failed (listed in {failed})", tag
        errors = tag["stderr"].splitlines()
        assert [l for l in errors if l.startswith("tagger: failed: ")] == [f"tagger: failed: {locked}: {reason}"], errors
        assert f"WARNING: {private}: cannot read folder (Permission denied); its photos are left out" in errors
        rows = pd.read_csv(out, keep_default_na=False).set_index("path")
        assert list(rows.index) == [str(good), str(locked)]
        assert rows.loc[str(good), "error"] == "" and rows.loc[str(good), "tags"]
        assert rows.loc[str(locked), "error"] == reason and rows.loc[str(locked), "tags"] == ""
        assert pd.read_csv(failed, sep="\t").to_dict("records") == [{"path": str(locked), "error": reason}]

        assert tag_private["code"] == 1, tag_private
        assert tag_private["stderr"].splitlines() == [f"tagger: error: {private}: cannot read folder (Permission denied)"], tag_private
    finally:
        if private.exists():
            private.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_tag_non_utf8_name_every_output_format(tmp_path, tiny_bundle, suffix):
    folder = tmp_path / "card"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    try:
        with open(raw, "wb") as f:
            f.write(_jpeg_bytes(_rgb(32, 32)))
    except OSError:
        pytest.skip("filesystem refuses non-UTF-8 names")
    out = tmp_path / f"out{suffix}"
    args = ["tag", str(folder), "--out", str(out), "--model", str(tiny_bundle)]
    for expect in ("1 tagged, 0 unchanged (kept), 0 failed", "0 tagged, 1 unchanged (kept), 0 failed"):
        result = runner.invoke(app, args)
        _no_traceback(result)
        assert result.exit_code == 0 and expect in result.stdout, result.output


# -- issue: bounded memory per photo, only regular files ------------------------------------------


@pytest.mark.parametrize("size", [(8000, 1), (100_000, 1), (1, 30_000), (5000, 3)])
def test_a_thin_image_is_cropped_before_the_resize(tmp_path, size):
    """An 86-byte 8000x1 PNG once became a 2,048,000x256 image (1.5 GB) in the resize to the backbone's 256 px."""
    path = tmp_path / "thin.png"
    Image.new("L", size, 128).save(path)
    assert path.stat().st_size < 2000
    im = load_image(path, min_side=256)
    w, h = im.size
    assert max(w, h) <= 4 * min(w, h)
    # What the backbone then makes of it is at most 256 x 1024 pixels.
    from pipelines.backbones import create_backbone

    backbone = create_backbone("tiny")
    assert backbone.pixels_transform(im).numel() <= 3 * 256 * 256


def test_cropping_a_panorama_does_not_change_its_features():
    from pipelines.backbones import create_backbone
    from pipelines.features import extract_images
    from pipelines.images import cap_aspect

    backbone = create_backbone("tiny")
    pano = _rgb(1500, 200, seed=3)  # 7.5:1, beyond the 4:1 kept
    assert cap_aspect(pano).size == (800, 200)
    full = backbone.forward_features(torch.stack([backbone.pixels_transform(pano)])).detach().numpy()
    assert np.allclose(extract_images([pano], backbone), full, atol=1e-6)


def test_fifos_and_devices_named_like_photos_are_refused_not_read(tmp_path, tiny_bundle):
    fifo, zero, good = tmp_path / "fifo.jpg", tmp_path / "zero.jpg", tmp_path / "good.jpg"
    os.mkfifo(fifo)  # reading it would block forever
    os.symlink("/dev/zero", zero)  # reading it would never end
    good.write_bytes(_jpeg_bytes(_rgb(32, 32)))
    for path, kind in ((fifo, "FIFO"), (zero, "character device")):
        with pytest.raises(ImageError, match=f"not a regular file \\(a {kind}\\)"):
            load_image(path)
    result = runner.invoke(app, ["predict", str(fifo), str(zero), str(good), "--model", str(tiny_bundle)])
    _no_traceback(result)
    assert result.exit_code == 1 and result.output.count("not a regular file") == 2 and f"{good}: " in result.output
    # A folder run does not even take them: they are counted as skipped.
    out = tmp_path / "out" / "tags.csv"
    result = runner.invoke(app, ["tag", str(tmp_path), "--out", str(out), "--model", str(tiny_bundle)])
    _no_traceback(result)
    assert result.exit_code == 0 and "1 tagged" in result.output
    assert "skipped 2: not a regular file (device, FIFO or socket)" in result.output
