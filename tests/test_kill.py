"""`tagger tag` killed with SIGKILL mid-run, then run again: no photo lost, none duplicated."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_photo_files


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
