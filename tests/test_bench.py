"""The benchmark scripts in bench/ run and report sane figures, at the tiniest sizes (the figures themselves mean little here)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_photo_files

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_lookup  # noqa: E402
import bench_memory  # noqa: E402
import bench_scaling  # noqa: E402
import bench_tagging  # noqa: E402
import harness  # noqa: E402
import run as bench_run  # noqa: E402


def test_rows_work_out_whether_the_target_is_met():
    assert harness.row("a", "1", "2", 0.95, "ratio >= 0.9")["met"] is True
    assert harness.row("a", "1", "2", 0.85, "ratio >= 0.9")["met"] is False
    assert harness.row("a", "1", "2", 3.0, "ratio <= 2.5")["met"] is False
    assert harness.row("a", "1", "2", 1.2345, None) == {"name": "a", "figure": "1", "reference": "2", "ratio": 1.234,
                                                         "target": None, "met": None, "note": ""}
    table = bench_run.format_table([harness.row("x", "9 photos/s", "10 photos/s", 0.9, "ratio >= 0.9", note="n=3")])
    assert "| 1 | x | 9 photos/s | 10 photos/s | 0.900 | >= 0.9 (met) |" in table and "1. n=3" in table


def test_run_measured_reports_the_child_peak_memory_alone():
    big = harness.run_measured([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    small = harness.run_measured([sys.executable, "-c", "print('hi')"])
    assert big["returncode"] == 0 and small["stdout"] == "hi\n"
    assert big["peak_rss_mb"] > 300 > small["peak_rss_mb"]  # the second run does not inherit the first one's peak


def test_paths_in_results_are_relative_to_the_repository(tmp_path):
    assert harness.rel(REPO / "bench" / "run.py") == "bench/run.py"
    assert harness.rel(REPO.parent / "shared" / "x") == "../shared/x"
    # A folder reached through a symlink (the shared folder is often one) keeps the path as given.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert harness.rel(tmp_path / "link" / "x").endswith("link/x")


def test_lookup_row_checks_equality_and_recall(tmp_path):
    # Synthetic features: no photos needed; a 3,000-word synthetic vocabulary for the HNSW part.
    out = tmp_path / "lookup.json"
    result = bench_lookup.main(["--synthetic-features", "--photos", "3", "--samples", "10", "--repeats", "1",
                                "--vocab", "3000", "--queries", "40", "--big-repeats", "1", "--ef", "256", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    p1 = result["part1"]
    assert p1["queries"] == 30 and p1["equal"] is True and p1["ids"]["different"] == 0
    assert p1["ids"]["same"] + p1["ids"]["ties_only"] == 30
    sweep = result["part2"]["ef_search"]
    assert [s["ef_search"] for s in sweep] == [128, 256]
    assert all(0.9 <= s["recall_at_k"] <= 1.0 and s["speedup"] > 0 for s in sweep)
    assert len(result["rows"]) == 3 and all(r["ratio"] > 0 for r in result["rows"])


def test_compare_ids_allows_ties_only():
    import numpy as np

    cos = np.array([[0.9, 0.5, 0.5, 0.1]])
    assert bench_lookup.compare_ids(np.array([[0, 2]]), cos[:, [0, 2]], np.array([[0, 1]]), cos)["ties_only"] == 1
    assert bench_lookup.compare_ids(np.array([[0, 3]]), cos[:, [0, 3]], np.array([[0, 1]]), cos)["different"] == 1


def test_tagging_and_scaling_rows_on_a_tiny_model(tiny_bundle, tmp_path):
    photos = tmp_path / "photos"
    make_photo_files(photos, 6)
    tagging = bench_tagging.main(["--model", str(tiny_bundle), "--photos", str(photos), "--n", "6", "--repeats", "1"])
    assert tagging["n"] == 6 and tagging["tag_photos_per_s"] > 0 and tagging["features_photos_per_s"] > 0
    first = tagging["rows"][0]
    assert first["target"] == "ratio >= 0.9" and first["met"] == (first["ratio"] >= 0.9)
    scaling = bench_scaling.main(["--model", str(tiny_bundle), "--photos", str(photos), "--n", "6", "--batch-sizes", "1,4",
                                  "--repeats", "1"])
    assert set(scaling["batch_sizes"]) == {"1", "4"} and scaling["rows"][0]["name"] == "scaling: batch 4"
    assert all(v["ms_per_photo"] > 0 for v in scaling["batch_sizes"].values())


@pytest.mark.slow
def test_runner_writes_one_table_and_json(subset_dir, tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", "lookup,coldstart", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| # | row | figure | reference (same run) | ratio | target |" in proc.stdout and "total wall time:" in proc.stdout
    results = json.loads(out.read_text())
    assert set(results["benches"]) == {"lookup", "coldstart"} and not results["failed"]
    cold = [r for r in results["rows"] if r["bench"] == "coldstart"]
    assert cold[0]["target"] == "ratio <= 2.5" and cold[0]["ratio"] > 0
    # No absolute paths outside the repository (but the --out given here, which the command line records).
    assert str(REPO.parent) not in out.read_text().replace(str(out), "OUT")


@pytest.mark.slow
def test_memory_row_measures_tagging_not_the_export(tiny_bundle, tmp_path):
    photos = tmp_path / "photos"
    make_photo_files(photos, 5)
    result = bench_memory.main(["--photos", str(photos), "--model", str(tiny_bundle), "--sizes", "2,5"])
    assert [r["photos"] for r in result["runs"]] == [2, 5]
    assert all(r["peak_rss_mb"] > 0 for r in result["runs"])
    assert result["rows"][0]["target"] == "ratio <= 1.1" and result["rows"][0]["met"] == (result["ratio"] <= 1.1)


@pytest.mark.slow
def test_training_bench_runs_on_a_slice(subset_dir, tmp_path):
    """make bench once failed here: train() became keyword-only and this script still called it positionally."""
    import bench_training

    result = bench_training.main(["--data", str(subset_dir), "--n", "500", "--steps", "2", "--repeats", "1",
                                  "--json", str(tmp_path / "t.json")])
    assert result["steps"] == 2 and result["train_pairs_per_s"] > 0 and result["bare_pairs_per_s"] > 0
    assert result["cli_wall_s"] > 0 and {r["name"] for r in result["rows"]} >= {"training: GAN pairs/s, train()"}
