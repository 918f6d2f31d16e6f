"""Commands killed with SIGKILL mid-run, or run twice at once: nothing lost, nothing done twice, no half-written output.

`tagger tag` resumes from its journal; `tagger train` from the checkpoint it writes after every epoch; a
bundle folder is replaced whole or not at all; a second `tagger tag` on the same output is refused.
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import TINY_TAGS, make_photo_files


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path, tiny_bundle):
    photos = make_photo_files(tmp_path / "photos", 600, size=64)
    out = tmp_path / "tags.jsonl"
    journal = tmp_path / "tags.jsonl.journal.jsonl"
    cmd = [sys.executable, "-m", "tagger.cli", "tag", str(tmp_path / "photos"), "--out", str(out),
           "--model", str(tiny_bundle), "--batch-size", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and sum(1 for _ in open(journal)) >= 40:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(valid_lines(journal))
    assert 40 <= done_before < len(photos) and not out.exists()

    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(photos) and {r["path"] for r in rows} == {str(p) for p in photos}
    assert all(r["tags"] and not r["error"] for r in rows)
    # The second run tagged only what the first had not finished.
    tagged = int(result.stdout.split(": ")[-1].split(" tagged")[0])
    assert tagged == len(photos) - done_before
    assert not journal.exists()


def valid_lines(path):
    rows = []
    for line in open(path):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # torn by the kill
    return rows


@pytest.mark.slow
def test_two_tag_runs_at_once_on_one_output(tmp_path, tiny_bundle):
    photos = make_photo_files(tmp_path / "photos", 200, size=48)
    out = tmp_path / "tags.csv"
    cmd = [sys.executable, "-m", "tagger.cli", "tag", str(tmp_path / "photos"), "--out", str(out),
           "--model", str(tiny_bundle), "--batch-size", "8"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.returncode, o, e) for p in procs for o, e in [p.communicate(timeout=300)]]
    done = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] != 0]
    assert done, results  # one finishes ...
    for code, stdout, stderr in refused:  # ... the other is refused at once, in one line, having touched nothing
        assert code == 1 and stdout == "" and "Traceback" not in stderr, (code, stdout, stderr)
        assert stderr.splitlines() == [f"tagger: error: {out}.lock: another `tagger tag` run is writing this output; "
                                       "wait for it or choose another --out"], stderr
    if not refused:  # their start-ups were far enough apart that the first had finished: the second kept it all
        assert sorted(r[1].split(": ", 1)[1].strip() for r in results) == [
            "0 tagged, 200 unchanged (kept), 0 failed", "200 tagged, 0 unchanged (kept), 0 failed"], results
    rows = pd.read_csv(out, keep_default_na=False)
    assert len(rows) == 200 and sorted(rows["path"]) == sorted(map(str, photos)) and (rows["error"] == "").all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "photos", "tags.csv"]  # no lock, journal or temporary left

    from typer.testing import CliRunner

    from tagger.cli import app

    again = CliRunner().invoke(app, cmd[3:])  # the same command once more, in this process
    assert again.exit_code == 0 and again.stdout.strip() == f"{out}: 0 tagged, 200 unchanged (kept), 0 failed", again.output


# -- a bundle folder being saved -------------------------------------------------------------------

SAVER = """
import sys
from pathlib import Path
from embeddings.files import atomic_dir
from tagger.bundle import load
out, i = Path(sys.argv[1]), 0
print("started", flush=True)
while True:  # save a new 'bundle' over the old one, again and again, until killed
    i += 1
    with atomic_dir(out) as tmp:
        for k in range(20):
            (tmp / f"part{k}").write_text(f"{i}\\n" * 2000)
        (tmp / "config.json").write_text(str(i))
"""


def test_bundle_folder_is_whole_or_absent_after_sigkill(tmp_path):
    """The save that `tagger train` and `Tagger.save` end with, killed at random moments: `atomic_dir`."""
    rng = random.Random(5)
    out = tmp_path / "model"
    seen = set()
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(out)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():  # whole: every part, all from the same save
            i = (out / "config.json").read_text()
            assert {(out / f"part{k}").read_text() for k in range(20)} == {f"{i}\n" * 2000}
            seen.add("whole")
        else:
            seen.add("absent")  # killed before the first save finished, or between the two renames
    assert "whole" in seen
    # Two more saves, not killed, clear what the killed ones left (the first keeps an .old folder if "model" was
    # missing: then it is the only copy of the previous save) and nothing else remains.
    for _ in range(2):
        subprocess.run([sys.executable, "-c", "from embeddings.files import atomic_dir; import sys\n"
                        "with atomic_dir(sys.argv[1]) as tmp: (tmp / 'config.json').write_text('last')", str(out)], check=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (out / "config.json").read_text() == "last"


# -- tagger train ----------------------------------------------------------------------------------

TRAIN_EPOCHS = 12
EPOCH_LINE = re.compile(r"^epoch (\d+): (.*) \(\d+ s\)$")  # the loss figures, without the wall time
RESUME_LINE = re.compile(r"^resuming from .* after epoch (\d+) \(step \d+\)$")


class Run:
    """A `tagger train` subprocess whose stdout lines are collected, with their arrival times, as they come."""

    def __init__(self, cmd, env):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.epoch_times: list[float] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in iter(self.proc.stdout.readline, ""):
            if EPOCH_LINE.match(line.strip()):
                self.epoch_times.append(time.monotonic())
            self.lines.append(line.strip())

    def epochs(self) -> list[int]:
        return [int(m.group(1)) for m in map(EPOCH_LINE.match, list(self.lines)) if m]

    def resumed_after(self) -> int | None:
        found = [int(m.group(1)) for m in map(RESUME_LINE.match, list(self.lines)) if m]
        return found[0] if found else None

    def wait_for(self, condition, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None and not condition():
            time.sleep(0.01)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.finish()

    def finish(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code


def training_manifest(folder: Path, n: int) -> Path:
    photos = make_photo_files(folder, n, size=16)
    manifest = folder / "manifest.csv"
    tags = [",".join(TINY_TAGS[i % len(TINY_TAGS)]) for i in range(n)]
    pd.DataFrame({"path": [p.name for p in photos], "tags": tags}).to_csv(manifest, index=False)
    return manifest


def checkpoint_epoch(cache: Path) -> int:
    """The last epoch the run's checkpoint holds (0: none written yet)."""
    found = list((cache / "runs").glob("*/checkpoint.pt"))
    assert len(found) <= 1, found
    return torch.load(found[0], weights_only=False)["state"]["epoch"] if found else 0


@pytest.mark.slow
def test_train_sigkill_at_random_points_then_resume(tmp_path):
    from tagger.bundle import load

    rng = random.Random(11)
    manifest = training_manifest(tmp_path / "photos", 64)
    cache, out = tmp_path / "cache", tmp_path / "model"
    env = {**os.environ, "TAGGER_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}

    def cmd(target):
        return [sys.executable, "-m", "tagger.cli", "train", str(manifest), "--out", str(target), "--backbone", "tiny",
                "--min-count", "1", "--epochs", str(TRAIN_EPOCHS), "--seed", "3"]

    printed: dict[int, set[str]] = {}  # epoch -> its loss line, from every run that finished the epoch
    saved = 0  # epochs in the checkpoint
    kills = []
    for i in range(3):
        run = Run(cmd(out), env)
        if i == 0:  # anywhere: start-up, features, word2vec, or just after an epoch's line (before its checkpoint)
            run.wait_for(lambda: len(run.epochs()) >= 2, timeout=rng.uniform(0.5, 8.0))
        else:  # two or three epochs in this run (to time one), then a random moment in the next epoch or its checkpoint
            target = rng.randint(1, 2)
            run.wait_for(lambda: len(run.epochs()) >= target + 1)
            epoch_seconds = run.epoch_times[-1] - run.epoch_times[-2] if len(run.epoch_times) >= 2 else 0.3
            time.sleep(rng.uniform(0.0, 1.0) * epoch_seconds)
        run.kill()
        assert run.proc.returncode == -signal.SIGKILL, "\n".join(run.lines)[-2000:]
        # It resumed where the checkpoint left off and did not redo an epoch the checkpoint held.
        assert run.resumed_after() == (saved or None), run.lines
        done = run.epochs()
        assert done == list(range(saved + 1, saved + 1 + len(done))), (saved, done)
        new_saved = checkpoint_epoch(cache)
        # The checkpoint holds every epoch the run finished, but perhaps the last (killed before it was written).
        assert new_saved >= saved and (not done or new_saved in (done[-1], done[-1] - 1)), (saved, new_saved, done)
        saved = new_saved
        kills.append((i, done, saved))
        for line in run.lines:
            if m := EPOCH_LINE.match(line):
                printed.setdefault(int(m.group(1)), set()).add(m.group(2))
        # Never half a bundle: the output folder does not exist, or it loads; temporary folders stay hidden.
        assert not out.exists() or load(out).words
        assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} <= {"cache", "photos", "model"}
    assert 0 < saved < TRAIN_EPOCHS, kills  # the kills landed in training, with training left to do

    run = Run(cmd(out), env)
    assert run.finish() == 0, "\n".join(run.lines)[-2000:]
    assert run.resumed_after() == saved and run.epochs() == list(range(saved + 1, TRAIN_EPOCHS + 1)), run.lines
    for line in run.lines:
        if m := EPOCH_LINE.match(line):
            printed.setdefault(int(m.group(1)), set()).add(m.group(2))
    # An epoch trained twice (killed before its checkpoint) gave the same losses both times.
    assert sorted(printed) == list(range(1, TRAIN_EPOCHS + 1)) and all(len(v) == 1 for v in printed.values()), printed
    resumed = load(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "model", "photos"]  # no temporary bundle beside it
    [run_dir] = (cache / "runs").iterdir()  # and no checkpoint a kill cut short (the run removes those)
    assert not list(run_dir.glob(".checkpoint.pt.*.tmp")), list(run_dir.iterdir())
    log = pd.read_csv(out / "train_log.csv")
    assert log["epoch"].tolist() == list(range(1, TRAIN_EPOCHS + 1))  # each epoch once
    assert resumed.info["epochs"] == TRAIN_EPOCHS

    # An uninterrupted run with the same seed (features and word vectors from the same cache) gives the same bundle.
    shutil.rmtree(cache / "runs")
    ref_out = tmp_path / "reference"
    run = Run(cmd(ref_out), env)
    assert run.finish() == 0, "\n".join(run.lines)[-2000:]
    assert run.resumed_after() is None
    reference = load(ref_out)
    ref_log = pd.read_csv(ref_out / "train_log.csv")
    pd.testing.assert_frame_equal(log.drop(columns="seconds"), ref_log.drop(columns="seconds"), check_exact=True)
    for (k, a), b in zip(reference.generator.state_dict().items(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.words == reference.words and (resumed.word_vectors.vectors == reference.word_vectors.vectors).all()
    assert resumed.info == reference.info
