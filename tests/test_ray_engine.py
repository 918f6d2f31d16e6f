"""The Ray engine on a real Ray: a local one started here, and a two-node cluster simulated on this machine.

Each run is checked against the local engine on the same photos: the same rows and tags, and the same scores
to their fourth decimal.
"""
import io
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import build_tiny_tagger

ray = pytest.importorskip("ray", reason='the Ray engine needs the ray extra: pip install "tagger[ray]"')

from tagger.bundle import load, save  # noqa: E402
from tagger.library.batch import tag_folder  # noqa: E402
from tagger.library.local import tag_paths  # noqa: E402
from tagger.library.ray_engine import Output, RayOptions, list_photos, read_output, tag_source  # noqa: E402
from tagger.library.results import read_results  # noqa: E402
from tagger.shipped import default_model_path  # noqa: E402

BATCH = 64  # units of CHUNK_BATCHES (2) x 64 = 128 photos: 200 photos make two, one per worker


@pytest.fixture(scope="module", params=["local", "two_nodes"])
def cluster(request):
    """A Ray for this module's tests: started here with 2 CPUs, or a head and a worker node of 1 CPU each."""
    if request.param == "local":
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield "local"
        ray.shutdown()
        return
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, log_to_driver=False)
    try:
        yield "two_nodes"
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def photos(subset_dir, tmp_path_factory) -> Path:
    """200 subset photos (symlinks, nothing copied) and one corrupt file."""
    folder = tmp_path_factory.mktemp("photos")
    for p in sorted((subset_dir / "images").glob("*.jpg"))[:200]:
        (folder / p.name).symlink_to(p)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def local_rows(photos, tmp_path_factory) -> pd.DataFrame:
    """The local engine's output on the same photos, model and batch size."""
    out = tmp_path_factory.mktemp("local") / "tags.parquet"
    tagger = load(default_model_path())
    tag_folder(photos, out, lambda paths: tag_paths(tagger, paths, batch_size=BATCH))
    return read_results(out).sort_values("path").reset_index(drop=True)


def rows_per_path(out: Path) -> pd.Series:
    """How many rows each photo has over every file of the output (1 each: nothing lost, nothing twice)."""
    return pd.concat([pd.read_parquet(f) for f in Output(out).files()])["path"].value_counts()


@pytest.mark.slow
@pytest.mark.data
def test_tags_equal_the_local_engine_a_bad_photo_is_reported_and_a_rerun_tags_nothing(cluster, photos, local_rows, tmp_path):
    out = tmp_path / "tags.parquet"
    options = RayOptions(workers=2, batch_size=BATCH)
    lines = io.StringIO()
    summary = tag_source(photos, out, default_model_path(), replace(options, progress_every=1e-9), progress_stream=lines)
    assert (summary.tagged, summary.failed) == (200, 1)
    assert not summary.ok and summary.missing == []  # exit code 1, as the local engine's: a photo failed in this run
    # A progress line as rows come back (here every unit: progress_every is tiny): done, rate, time to go.
    shown = lines.getvalue().splitlines()
    done = [int(line.split()[1].replace(",", "")) for line in shown]
    assert len(shown) >= 2 and done == sorted(done) and done[-1] == 201, shown
    assert shown[-1].startswith("tagger: 201 of 201 photos done, ") and " photos/s, about 0 min 00 s to go" in shown[-1], shown
    reason = local_rows.set_index("path").loc[str(photos / "broken.jpg"), "error"]
    assert reason.startswith("corrupt or truncated")
    assert summary.failures == [f"{photos / 'broken.jpg'}: {reason}"]
    assert summary.failures_file.read_text().splitlines() == ["path\terror", f"{photos / 'broken.jpg'}\t{reason}"]
    rows = read_output(out)
    assert list(rows.columns) == list(local_rows.columns) == ["path", "tags", "scores", "error", "hash", "settings", "note", "size", "mtime"]
    assert list(rows["path"]) == list(local_rows["path"])
    assert [list(t) for t in rows["tags"]] == [list(t) for t in local_rows["tags"]]
    # Scores to their 4 decimals, give or take the last: ONNX Runtime's result moves in the last bits with its thread
    # count (a Ray worker runs one thread, the local engine as many as the machine has), which can tip a rounding.
    assert all(len(a) == len(b) and np.allclose(a, b, atol=1.01e-4) for a, b in zip(rows["scores"], local_rows["scores"]))
    assert list(rows["error"]) == list(local_rows["error"]) and list(rows["hash"]) == list(local_rows["hash"])
    assert len(Output(out).files()) == 1  # rows gathered on the driver into files of 100,000 by default

    again = tag_source(photos, out, default_model_path(), options)
    assert (again.tagged, again.kept, again.failed) == (0, 200, 1)
    assert rows_per_path(out).max() == 1


def _tag_worker_actors() -> list[dict]:
    # The state API (ray.util.state) needs the dashboard, which ray[data] does not install; the GCS's actor table is the same data.
    return [a for a in ray._private.state.actors().values() if "TagWorker" in a["ActorClassName"] and a["State"] == "ALIVE"]


KILL_CHILD = """
import json, sys, threading, time
import ray
from ray._raylet import ActorID
from ray.cluster_utils import Cluster
from tagger.library.ray_engine import Output, RayOptions, tag_source
from tagger.shipped import default_model_path

photos, out, kill = sys.argv[1], sys.argv[2], sys.argv[3] == "kill"
nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
nodes.add_node(num_cpus=1)
ray.init(address=nodes.address, log_to_driver=False)
print("session:", ray._private.worker.global_worker.node.get_session_dir_path(), flush=True)
killed = []

def workers():
    return [a for a in ray._private.state.actors().values() if "TagWorker" in a["ActorClassName"] and a["State"] == "ALIVE"]

def kill_one_worker_once_a_unit_is_written():
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not killed:
        busy = workers()
        if Output(out).files() and busy:
            # ray.kill wants a handle; an actor's handle from its id (the actors are Ray Data's, unnamed).
            handle = ray._private.worker.global_worker.core_worker.get_actor_handle(ActorID.from_hex(busy[0]["ActorID"]))
            ray.kill(handle, no_restart=False)
            killed.append(busy[0]["ActorID"])
        time.sleep(0.05)

killer = threading.Thread(target=kill_one_worker_once_a_unit_is_written)
if kill:
    killer.start()
# Units of 2 x 4 = 8 photos in files of 32 rows: the workers are mid-way through the run when the first file appears.
summary = tag_source(photos, out, default_model_path(), RayOptions(workers=2, batch_size=4, rows_per_file=32))
if kill:
    killer.join()
restarts = [a["NumRestarts"] for a in ray._private.state.actors().values() if killed and a["ActorID"] == killed[0]]
print(json.dumps({"killed": bool(killed), "restarts": restarts, "done": summary.tagged + summary.failed}))
ray.shutdown()
nodes.shutdown()
"""


def _stop_session(session: str) -> None:
    """Ends every process of a Ray session a child driver left running when Ray aborted it."""
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if session.encode() in f.read():
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.slow
@pytest.mark.data
def test_a_worker_killed_mid_run_loses_nothing_and_repeats_nothing(photos, local_rows, tmp_path):
    """A worker killed mid-run is restarted and the run ends with every photo once. The driver runs in a child, on a
    two-node Ray of its own: Ray 2.60's driver sometimes aborts on a worker's death ("Check failed: address.node_id()
    != ''", a bug in Ray's client pool), which in pytest's own process ends the whole test session, and after it
    another driver of the same cluster could wait forever for a task (the next test here hung in `from_arrow_refs`).
    When Ray aborts, the run is resumed as a user would, by running it again, and the output must still hold every
    photo once."""
    import json
    import subprocess
    import sys

    out = tmp_path / "tags.parquet"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}

    def run(kill: bool) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(photos), str(out), "kill" if kill else "no"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        said = ""
        try:
            said, child.stderr = child.communicate(timeout=600)
        finally:
            child.kill()
            sessions = [line.split(" ", 1)[1] for line in said.splitlines() if line.startswith("session: /")]
            for session in sessions:  # its Ray's processes, where an abort left them
                _stop_session(session)
        child.stdout, child.session = said, sessions[0] if sessions else ""
        return child

    first = run(kill=True)
    resumed = first.returncode != 0
    if resumed:
        logs = Path(first.session) / "logs"
        said = first.stderr + "".join(f.read_text(errors="replace") for f in logs.glob(f"python-core-driver-*_{first.pid}.log"))
        assert "bug in Ray" in said or first.returncode < 0, first.stderr[-3000:]  # Ray's abort, not ours
        again = run(kill=False)
        assert again.returncode == 0, again.stderr[-3000:]
        assert json.loads(again.stdout.splitlines()[-1])["done"] <= 201
    else:
        report = json.loads(first.stdout.splitlines()[-1])
        assert report["killed"], "no worker was killed: the run ended first"
        assert report["restarts"] == [1] and report["done"] == 201
    counts = rows_per_path(out)
    assert len(counts) == 201 and counts.max() == 1  # every photo exactly once
    rows = read_output(out)
    assert set(rows.loc[rows["error"] == "", "path"]) == set(local_rows.loc[local_rows["error"] == "", "path"])
    files = len(Output(out).files())
    if not resumed:
        assert files == 7  # 201 rows in files of 32 (the last 9)

    from tagger.library.ray_engine import compact

    assert compact(out) == (files, 1, 201)  # merged into one file of up to 100,000 rows
    merged = read_output(out)
    pd.testing.assert_frame_equal(merged, rows)
    assert rows_per_path(out).max() == 1


@pytest.mark.slow
def test_a_manifest_and_a_file_uri_give_the_folders_photos(tmp_path):
    from conftest import make_photo_files

    paths = make_photo_files(tmp_path / "photos" / "sub", 3)
    (tmp_path / "photos" / ".hidden.jpg").write_bytes(b"x")
    manifest = tmp_path / "list.csv"
    pd.DataFrame({"path": ["photos/sub/" + p.name for p in paths]}).to_csv(manifest, index=False)
    from_folder = list_photos(tmp_path / "photos")[0]
    assert from_folder["key"].to_pylist() == [str(p) for p in paths]
    assert list_photos(manifest)[0]["key"].to_pylist() == [str(p) for p in paths]
    uri = (tmp_path / "photos").as_uri()
    from_uri = list_photos(uri)[0]
    assert from_uri["key"].to_pylist() == [f"file://{p}" for p in paths]
    # Every listing says each photo's size and mtime, as a stat does: what a rerun compares before reading anything.
    stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    for listing in (from_folder, list_photos(manifest)[0], from_uri):
        assert list(zip(listing["size"].to_pylist(), listing["mtime"].to_pylist())) == stats
    # A manifest may say them itself (an archive's inventory): taken as they are, -1 (not known: hashed) where a cell is not a number.
    listed = tmp_path / "listed.tsv"
    pd.DataFrame({"path": ["photos/sub/" + p.name for p in paths], "size": ["10", "", "12"], "mtime": ["5", "6", "x"]}).to_csv(
        listed, sep="\t", index=False)
    given = list_photos(listed)[0]
    assert given["key"].to_pylist() == [str(p) for p in paths]
    assert given["size"].to_pylist() == [10, -1, 12] and given["mtime"].to_pylist() == [5, 6, -1]


@pytest.mark.slow
def test_a_file_uri_source_and_features_for_train(cluster, tmp_path):
    """A file:// URI tagged as its folder is, and `warm_feature_cache` gives extract_features' features."""
    import numpy as np

    from pipelines.features import FeatureConfig, extract_features
    from tagger.library.ray_engine import warm_feature_cache
    from conftest import make_photo_files

    paths = make_photo_files(tmp_path / "photos", 12)
    bundle = save(build_tiny_tagger(), tmp_path / "bundle")
    summary = tag_source((tmp_path / "photos").as_uri(), (tmp_path / "tags.parquet").as_uri(), bundle, RayOptions(workers=1, batch_size=4))
    assert summary.tagged == 12
    rows = read_output(tmp_path / "tags.parquet")
    tagger = load(bundle)
    local = {str(p): [t for t, _ in r.tags] for p, r in tag_paths(tagger, paths, batch_size=4)}
    assert {Path(p.removeprefix("file://")).as_posix(): list(t) for p, t in zip(rows["path"], rows["tags"])} == local

    config = FeatureConfig(backbone="tiny", batch_size=4, num_workers=0, cache_dir=tmp_path / "cache")
    assert warm_feature_cache(paths, config, RayOptions(workers=2, batch_size=4)) == 12
    assert warm_feature_cache(paths, config, RayOptions(workers=2, batch_size=4)) == 0  # all cached now
    cached = extract_features(paths, config, progress=False)
    assert cached.n_cached == 12 and cached.n_extracted == 0
    fresh = extract_features(paths, FeatureConfig(backbone="tiny", batch_size=4, num_workers=0), progress=False)
    np.testing.assert_array_equal(cached.features, fresh.features)
    # What the Ray workers measured is kept beside the features, as the local engine keeps it.
    np.testing.assert_array_equal(cached.chroma, fresh.chroma)  # float32 in either
    assert cached.blank.tolist() == fresh.blank.tolist() and cached.places == fresh.places == [()] * 12


@pytest.mark.slow
def test_a_rerun_tags_new_and_changed_photos_and_drops_the_rows_of_removed_ones(cluster, tmp_path):
    from conftest import make_photo_files

    if cluster != "local":
        pytest.skip("resume is the driver's work, the same on any cluster: checked once, on the local Ray")
    paths = make_photo_files(tmp_path / "photos", 5)
    bundle = save(build_tiny_tagger(), tmp_path / "bundle")
    out = tmp_path / "tags.parquet"
    options = RayOptions(workers=1, batch_size=2)
    assert tag_source(tmp_path / "photos", out, bundle, options).tagged == 5
    make_photo_files(tmp_path / "photos", 1, seed=7)  # photo000.jpg changes
    make_photo_files(tmp_path / "more", 1, seed=8)[0].rename(tmp_path / "photos" / "new.jpg")
    paths[4].unlink()
    summary = tag_source(tmp_path / "photos", out, bundle, options)
    assert (summary.tagged, summary.kept, summary.failed) == (2, 3, 0)
    rows = read_output(out)
    assert sorted(Path(p).name for p in rows["path"]) == ["new.jpg", "photo000.jpg", "photo001.jpg", "photo002.jpg", "photo003.jpg"]
    from embeddings.files import content_hash

    assert dict(zip(rows["path"], rows["hash"]))[str(paths[0])] == content_hash(paths[0])
    assert rows_per_path(out).max() == 1 and len(rows_per_path(out)) == 5  # the superseded and removed rows are gone


def test_folders_and_manifests_tagged_into_one_output_keep_each_others_rows(cluster, tmp_path):
    """A run answers for its folder's photos (a manifest: for its listed ones): an archive tagged as several runs into
    one output keeps every run's rows, and a photo removed from a folder still leaves it."""
    from conftest import make_photo_files

    if cluster != "local":
        pytest.skip("the plan is the driver's work, the same on any cluster: checked once, on the local Ray")
    make_photo_files(tmp_path / "2019", 3)
    make_photo_files(tmp_path / "2020", 2, seed=3)
    gone = make_photo_files(tmp_path / "2019b", 2, seed=5)[0]  # a folder whose name starts as 2019's does
    bundle = save(build_tiny_tagger(), tmp_path / "bundle")
    out, options = tmp_path / "tags.parquet", RayOptions(workers=1, batch_size=2)
    (tmp_path / "2020" / "bad.jpg").write_bytes(b"not a photo")
    for folder in ("2019", "2020", "2019b"):
        tag_source(tmp_path / folder, out, bundle, options)
    assert len(read_output(out)) == 8
    gone.unlink()
    summary = tag_source(tmp_path / "2019b", out, bundle, options)
    assert (summary.tagged, summary.kept) == (0, 1)
    rows = read_output(out)
    assert len(rows) == 7 and str(gone) not in set(rows["path"]) and rows_per_path(out).max() == 1
    failed = summary.failures_file.read_text().splitlines()[1:]  # the other folder's failure is still listed
    assert len(failed) == 1 and failed[0].startswith(f"{tmp_path / '2020' / 'bad.jpg'}\t"), failed
    manifest = tmp_path / "some.csv"
    manifest.write_text("path\n" + "\n".join(str(p) for p in sorted((tmp_path / "2019").iterdir())[:1]) + "\n")
    summary = tag_source(manifest, out, bundle, options)
    assert (summary.tagged, summary.kept) == (0, 1) and len(read_output(out)) == 7  # the photos it does not list stay


@pytest.mark.slow
def test_the_cli_tags_and_extracts_on_ray(cluster, tmp_path):
    from typer.testing import CliRunner

    from conftest import make_photo_files
    from tagger.cli import app

    if cluster != "local":
        pytest.skip("the command line is the same on any cluster: checked once, on the local Ray")
    make_photo_files(tmp_path / "photos", 6)
    (tmp_path / "photos" / "notes.jpg").write_text("not a photo")
    bundle = save(build_tiny_tagger(), tmp_path / "bundle")
    args = ["tag", str(tmp_path / "photos"), "--out", str(tmp_path / "t.parquet"), "--model", str(bundle), "--engine", "ray", "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # a photo failed in this run: 1, as the local engine says
    assert f"{tmp_path / 't.parquet'}: 6 tagged, 0 unchanged (kept), 1 failed" in result.output
    assert "notes.jpg: not an image (unknown format)" in result.output
    again = CliRunner().invoke(app, args)  # again: only the failed photo is tried, and fails
    assert "0 tagged, 6 unchanged (kept), 1 failed" in again.output and again.exit_code == 1, again.output
    before = read_output(tmp_path / "t.parquet")
    merged = CliRunner().invoke(app, ["compact", str(tmp_path / "t.parquet")])  # each run left a file: one now
    assert merged.exit_code == 0 and f"{tmp_path / 't.parquet'}: 7 rows, 2 files merged into 1" in merged.output, merged.output
    pd.testing.assert_frame_equal(read_output(tmp_path / "t.parquet"), before)
    assert len(Output(tmp_path / "t.parquet").files()) == 1
    result = CliRunner().invoke(app, args[:-4] + ["--engine", "ray", "--sidecar", "xmp"])
    assert result.exit_code == 1 and "--sidecar is not supported with --engine ray" in result.output

    result = CliRunner().invoke(app, ["features", str(tmp_path / "photos"), "--out", str(tmp_path / "feats"), "--backbone", "tiny",
                                      "--cache-dir", str(tmp_path / "cache"), "--engine", "ray", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "7 x 32 (1 failed)" in result.output, result.output


def test_the_cli_names_the_engines(tmp_path):
    from typer.testing import CliRunner

    from tagger.cli import app

    result = CliRunner().invoke(app, ["tag", str(tmp_path), "--out", str(tmp_path / "t.parquet"), "--engine", "spark"])
    assert result.exit_code == 2 and "'spark' is not one of" in " ".join(result.output.split())  # Typer's choice check
    result = CliRunner().invoke(app, ["tag", str(tmp_path), "--out", str(tmp_path / "t.csv"), "--workers", "2"])
    assert result.exit_code == 1 and "--address and --workers go with --engine ray" in result.output


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch):
    import sys

    from tagger.library.results import BatchError
    from tagger.library.ray_engine import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    with pytest.raises(BatchError, match=r'pip install "tagger\[ray\]"'):
        import_ray()


@pytest.mark.slow
def test_both_engines_take_every_tag_option_and_give_the_same_results(cluster, tmp_path):
    """`--engine ray` once ignored --runtime, --exclude-dir, --skip-owner-tagged and --no-retry-failed, and exited 0
    on a folder with a bad photo. Every option of `tag`, on both engines, through the command line (--flat and
    --keyword-root say how sidecars file the keywords: taken by both, the rows the same with them or without)."""
    from typer.testing import CliRunner

    from conftest import make_photo_files
    from tagger.cli import app

    if cluster != "local":
        pytest.skip("the options are the driver's and the actor's, the same on any cluster: checked once, on the local Ray")
    lib = tmp_path / "lib"
    make_photo_files(lib, 9, size=48)
    make_photo_files(lib / "skipme", 2, size=48, seed=3)  # left out by --exclude-dir
    make_photo_files(lib / "owned", 1, size=48, seed=4)
    (lib / "owned" / "photo000.jpg.xmp").write_text(  # the owner's keywords: left out by --skip-owner-tagged
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag><rdf:li>Tante Rose</rdf:li>'
        '</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>')
    (lib / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    # A lens-cap frame (no tags, a note) and a photo with GPS EXIF (its place first), measured by each engine's decoders.
    Image.fromarray(np.clip(np.random.default_rng(0).normal(3, 2, (300, 400, 3)), 0, 255).astype(np.uint8)).save(lib / "cap.jpg")
    exif = Image.Exif()
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.24), 3: "E", 4: (2.0, 17.0, 40.2)})
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(lib / "paris.jpg", exif=exif)
    tagger = build_tiny_tagger(knn_photos=20)
    bundle = save(tagger, tmp_path / "bundle")
    word = tagger.words[0]
    runner = CliRunner()

    def run(engine: str, out: Path, *more: str):
        args = ["tag", str(lib), "--out", str(out), "--model", str(bundle), "--method", "cgan+knn", "--top-k", "3",
                "--min-score", "0.01", "--exclude", word, "--seed", "5", "--exclude-dir", "skipme", "--skip-owner-tagged",
                "--runtime", "torch", "--batch-size", "4", "--flat", "--keyword-root", "machine", "--engine", engine, *more]
        return runner.invoke(app, args + (["--workers", "1"] if engine == "ray" else []))

    local, on_ray = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    first = {engine: run(engine, out) for engine, out in (("local", local), ("ray", on_ray))}
    for result in first.values():
        assert result.exit_code == 1, result.output  # the bad photo failed in this run, on both
        assert "12 photos" in result.output and "broken.jpg" in result.output, result.output
        assert "1 blank frames given no tags" in result.output, result.output
    a, b = read_results(local).sort_values("path").reset_index(drop=True), read_output(on_ray)
    assert list(a["path"]) == list(b["path"]) and len(a) == 12  # 9 photos, cap, paris + the broken one; skipme/ and owned/ left out
    assert not any("skipme" in p or "owned" in p for p in a["path"])
    assert [list(t) for t in a["tags"]] == [list(t) for t in b["tags"]]
    # top_k content tags, and the GPS places in addition to them
    assert all(len([w for w in t if w not in ("paris", "france")]) <= 3 and word not in t for t in a["tags"]) and sum(map(len, a["tags"])) > 0
    for x, y in zip(a["scores"], b["scores"]):
        assert list(x) == pytest.approx(list(y), abs=1e-4)
    assert list(a["error"]) == list(b["error"]) and (a["error"] != "").sum() == 1
    assert list(a["note"]) == list(b["note"]) and list(a["note"]).count("no tags: near-black frame") == 1
    by_name = {Path(p).name: list(t) for p, t in zip(a["path"], a["tags"])}
    assert by_name["cap.jpg"] == [] and by_name["paris.jpg"][:2] == ["paris", "france"]
    assert list(a["settings"]) == list(b["settings"]) and "method=cgan+knn top_k=3 min_score=0.01 seed=5" in a["settings"][0]

    again = {engine: run(engine, out, "--no-retry-failed") for engine, out in (("local", local), ("ray", on_ray))}
    for result in again.values():
        assert result.exit_code == 0, result.output  # the failure is an old one, kept, not retried
        assert "0 tagged, 11 unchanged (kept), 1 failed" in result.output, result.output


@pytest.mark.slow
def test_uris_reach_the_ray_engine_as_typed(cluster, tmp_path):
    """SOURCE and --out were Paths, which fold file:///x to file:/x; a regex put the slashes back. They are text now."""
    from typer.testing import CliRunner

    from conftest import make_photo_files
    from tagger.cli import app

    if cluster != "local":
        pytest.skip("the command line is the driver's: checked once, on the local Ray")
    make_photo_files(tmp_path / "photos", 3)
    bundle = save(build_tiny_tagger(), tmp_path / "bundle")
    out = (tmp_path / "tags.parquet").as_uri()
    result = CliRunner().invoke(app, ["tag", (tmp_path / "photos").as_uri(), "--out", out, "--model", str(bundle), "--engine", "ray",
                                      "--workers", "1", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert f"{out}: 3 tagged" in result.output
    assert sorted(read_output(tmp_path / "tags.parquet")["path"]) == [(tmp_path / "photos" / f"photo00{i}.jpg").as_uri() for i in range(3)]


@pytest.mark.slow
def test_a_rerun_reads_only_photos_whose_listing_changed_on_both_engines(cluster, tmp_path):
    """rsync's quick check, the same on both engines: a photo whose size and mtime match its row is not read; a touched
    one is hashed and kept (its row takes the new mtime); one rewritten with its size and mtime put back is not noticed
    until --rehash reads every photo."""
    from conftest import make_photo_files
    from embeddings.files import content_hash

    if cluster != "two_nodes":
        pytest.skip("checked on the two-node cluster, where the hashing tasks run on both nodes")
    paths = make_photo_files(tmp_path / "photos", 4)
    bundle = save(build_tiny_tagger(), tmp_path / "bundle")
    tagger = load(bundle)
    outs = {"ray": tmp_path / "ray.parquet", "local": tmp_path / "local.csv"}

    def run(engine: str, **kw):
        if engine == "ray":
            return tag_source(tmp_path / "photos", outs["ray"], bundle, RayOptions(workers=2, batch_size=2), **kw)
        return tag_folder(tmp_path / "photos", outs["local"], lambda p: tag_paths(tagger, p, batch_size=2), **kw)

    def rows(engine: str) -> pd.DataFrame:
        return (read_output(outs["ray"]) if engine == "ray" else read_results(outs["local"])).set_index("path")

    def counts(summary):
        return summary.tagged, summary.kept, summary.hashed

    engines = ("local", "ray")
    assert [counts(run(e)) for e in engines] == [(4, 0, 0)] * 2
    for engine in engines:
        listed = rows(engine)
        assert [(listed.loc[str(p), "size"], listed.loc[str(p), "mtime"]) for p in paths] == \
            [(p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    assert [counts(run(e)) for e in engines] == [(0, 4, 0)] * 2  # nothing read

    touched = paths[0].stat().st_mtime_ns + 10**9
    os.utime(paths[0], ns=(touched, touched))
    assert [counts(run(e)) for e in engines] == [(0, 4, 1)] * 2  # read, the same content: kept
    assert [rows(e).loc[str(paths[0]), "mtime"] for e in engines] == [touched] * 2
    assert [counts(run(e)) for e in engines] == [(0, 4, 0)] * 2  # the row holds the new mtime: not read again

    before = paths[1].stat()
    data = bytearray(paths[1].read_bytes())
    data[len(data) // 2] ^= 0x55  # other content, the same size
    paths[1].write_bytes(bytes(data))
    os.utime(paths[1], ns=(before.st_atime_ns, before.st_mtime_ns))  # and the mtime put back, as a careless copy may
    assert [counts(run(e)) for e in engines] == [(0, 4, 0)] * 2  # what the quick check cannot see
    for engine in engines:
        again = run(engine, rehash=True)
        assert (again.hashed, again.tagged + again.failed_now, again.kept) == (4, 1, 3)
        assert rows(engine).loc[str(paths[1]), "hash"] == content_hash(paths[1])


@pytest.mark.slow
def test_the_rows_under_a_start_keep_their_place_and_pruning_drops_only_those_asked(tmp_path):
    """Output.table(strip=, under=True): only the rows whose path has the start (other folders' rows are never held),
    each with its position over every file read; prune(drop) rewrites or deletes just the files holding those rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tagger.library.ray_engine import SCHEMA

    out = tmp_path / "tags.parquet"
    out.mkdir()
    names = [["/a/1.jpg", "/b/1.jpg", "/a/2.jpg"], ["/b/2.jpg", "/b/3.jpg"], ["/a/3.jpg", "/a/1.jpg"]]
    for i, paths in enumerate(names):
        n = len(paths)
        pq.write_table(pa.table({"path": paths, "tags": [["x"]] * n, "scores": [[0.5]] * n, "error": [""] * n, "hash": ["h"] * n,
                                 "settings": ["s"] * n, "note": [""] * n, "size": [1] * n, "mtime": [i] * n}, schema=SCHEMA),
                       out / f"part-2026010{i}T000000000000-000000.parquet")
    output = Output(out)
    under = output.table(["path", "mtime"], strip="/a/", under=True)
    assert under["path"].to_pylist() == ["1.jpg", "2.jpg", "3.jpg", "1.jpg"] and under["_row"].to_pylist() == [0, 2, 5, 6]
    assert under["mtime"].to_pylist() == [0, 0, 2, 2]
    output.prune(np.array([0, 6, 5]))  # /a/1.jpg's older row, and both rows of the third file
    rows = pd.concat([pd.read_parquet(f) for f in Output(out).files()])
    assert rows["path"].tolist() == ["/b/1.jpg", "/a/2.jpg", "/b/2.jpg", "/b/3.jpg"] and len(Output(out).files()) == 2


def test_a_node_that_does_not_answer_the_probe_is_named_in_one_line(cluster):
    """The probe's answers were awaited with no limit: a node that never answers held the run there, silent, forever."""
    import time

    from tagger.library.ray_engine import probe_nodes
    from tagger.library.results import BatchError

    def answers(samples, device):
        return ""

    def silent(samples, device):
        time.sleep(600)
        return ""

    probe_nodes(ray, [], "cpu", timeout=60, check=answers)  # every node answers: nothing said
    started = time.monotonic()
    with pytest.raises(BatchError) as refused:
        probe_nodes(ray, [], "cpu", timeout=3, check=silent)
    assert time.monotonic() - started < 60
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    said = str(refused.value)
    assert "no answer to the probe in 3 s" in said and "\n" not in said
    assert all(n["NodeID"][:8] in said for n in nodes), said


def test_a_device_error_is_one_line_before_any_actor_starts(cluster, tmp_path):
    """--device mps where there is none failed inside an actor after 14 s with a 181-line traceback, and left an empty
    output folder."""
    import torch
    from typer.testing import CliRunner

    from conftest import make_photo_files
    from tagger.cli import app

    if cluster != "local":
        pytest.skip("the devices are checked before any actor, the same on any cluster: checked once, on the local Ray")
    if torch.backends.mps.is_available() or torch.cuda.is_available():
        pytest.skip("this machine has the devices that this test asks for where there are none")
    make_photo_files(tmp_path / "photos", 2)
    bundle = save(build_tiny_tagger(), tmp_path / "bundle")
    out = tmp_path / "t.parquet"
    for device, says in (("mps", "--device mps: device 'mps' asked for, but Apple MPS is not available here (use cpu)"),
                         ("cuda:1", "--device cuda:1: the ray engine runs on cpu, cuda or mps; on Ray each worker is given a GPU of "
                                    "its own: use --device cuda"),
                         ("cuda", "--device cuda: the Ray cluster has no GPUs")):
        result = CliRunner().invoke(app, ["tag", str(tmp_path / "photos"), "--out", str(out), "--model", str(bundle), "--engine", "ray",
                                          "--device", device])
        assert result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("tagger: error: ")]
        assert len(errors) == 1 and says in errors[0] and "Traceback" not in result.output, result.output
        assert not _tag_worker_actors() and not out.exists()  # no actor started, no empty folder left


def test_without_an_address_a_local_ray_starts_even_where_another_is_named(tmp_path):
    """No --address: tagger's own local Ray, even where RAY_ADDRESS (or a `ray start` left on the machine) names
    another cluster, which ray.init would join and then refuse (num_cpus given for an existing cluster)."""
    import subprocess
    import sys

    child = ("from tagger.library.ray_engine import ray_session\n"
             "with ray_session() as ray:\n"
             "    print(int(ray.cluster_resources()['CPU']))\n")
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert int(run.stdout.split()[-1]) == (os.cpu_count() or 1)


PLAN_CHILD = """
import re, sys
from tagger.library.bundle_check import checked_settings
from tagger.library.ray_engine import RayOptions, tag_source

class Planned(Exception):
    pass

def stop(plan):
    if plan.todo:
        raise Planned(plan.todo)

manifest, out, model = sys.argv[1:4]
try:
    tag_source(manifest, out, model, RayOptions(workers=1), settings=checked_settings(model), on_plan=stop)
    todo = 0
except Planned as e:
    todo = e.args[0]
# Its own peak: ru_maxrss would count the peak of the process that started it (kept across exec), pytest's.
print(todo, int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024, "torch" in sys.modules)
"""


@pytest.mark.slow
def test_the_driver_plans_a_2m_row_manifest_and_reruns_it_in_under_1_gb(tmp_path):
    """The driver of `tagger tag MANIFEST --engine ray`, in a fresh process with its own Ray: a first run of 2 million
    photos planned, and a rerun over an output holding all of them (nothing to do) run to its end, each under 1 GB at
    its peak (VmHWM). It was 1.1 and 1.9 GB with torch loaded to check the bundle, the rows' hashes read and the rows
    deduplicated by a table of their paths, and the rerun 1.12 GB with the whole paths matched (these are ~95
    characters), one hash table over all 2M keys and the rows' settings decoded; without torch it holds ~115 MB
    before the listing."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tagger.library.ray_engine import SCHEMA

    n, model = 2_000_000, default_model_path()
    names = pa.array([f"2019/{i // 1000:05d}/IMG_{i:08d}.jpg" for i in range(n)])  # relative: taken from the manifest's folder
    size, mtime = pa.array(np.arange(n, dtype=np.int64)), pa.array(np.full(n, 10**18, dtype=np.int64))
    pq.write_table(pa.table({"path": names, "size": size, "mtime": mtime}), tmp_path / "manifest.parquet")
    del names
    done = tmp_path / "done.parquet"
    done.mkdir()
    paths, settings = pa.array([f"{tmp_path}/2019/{i // 1000:05d}/IMG_{i:08d}.jpg" for i in range(n)]), load(model).settings()
    for start in range(0, n, 100_000):  # what a finished run leaves: files of 100,000 rows
        k = min(100_000, n - start)
        pq.write_table(pa.table({
            "path": paths.slice(start, k), "tags": pa.array([["sky", "sea"]] * k, pa.list_(pa.string())),
            "scores": pa.array([[0.9, 0.5]] * k, pa.list_(pa.float64())), "error": pa.array([""] * k),
            "hash": pa.array([f"{i:064x}" for i in range(start, start + k)]), "settings": pa.array([settings] * k), "note": pa.array([""] * k),
            "size": size.slice(start, k), "mtime": mtime.slice(start, k)}, schema=SCHEMA), done / f"part-20260101T000000000000-{start // 100_000:06d}.parquet")
    del paths
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    for out, expected in ((tmp_path / "tags.parquet", n), (done, 0)):
        run = subprocess.run([sys.executable, "-c", PLAN_CHILD, str(tmp_path / "manifest.parquet"), str(out), str(model)],
                             capture_output=True, text=True, env=env, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        todo, peak, torch_loaded = run.stdout.split()
        assert (int(todo), torch_loaded) == (expected, "False")
        assert float(peak) < 1024, f"{out.name}: the driver peaked at {float(peak):.0f} MB for {n:,} photos"
    assert not (tmp_path / "tags.parquet").exists()  # stopped once planned: no empty folder left
