"""The README's cluster, started as "Starting a cluster" prints it: `ray start --head` and `ray start --address`, two
processes, the second node in a mount namespace of its own, so that a folder of the driver's is empty there.

What it checks: the commands work as printed (token authentication included); a SOURCE the other node does not see is
refused before any photo is read, in one line naming the node; an --out that only the driver has is fine (the driver
writes the output); and every photo's row is there, from both nodes' workers.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import build_tiny_tagger, make_photo_files

ray = pytest.importorskip("ray", reason='the Ray engine needs the ray extra: pip install "tagger[ray]"')

from tagger.bundle import save  # noqa: E402
from tagger.library.ray_engine import read_output  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The commands of README's "Starting a cluster" block, without their comments."""
    text = (REPO / "README.md").read_text()
    block = text.split("### Starting a cluster", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare(), reason="needs unshare -m (root, or user namespaces) to give the second node its own mounts")
def test_the_readme_cluster_refuses_a_source_one_node_lacks_and_tags_a_shared_one(tmp_path):
    commands = readme_commands()
    exports = dict(c.removeprefix("export ").split("=", 1) for c in commands if c.startswith("export "))
    head = next(c for c in commands if c.startswith("ray start --head"))
    join = next(c for c in commands if c.startswith("ray start --address"))
    token = "ray get-auth-token --generate"
    assert exports == {"RAY_AUTH_MODE": "token"} and "ray status" in commands and commands.index(token) < commands.index(head)
    # A home of its own: the token is made as on a new machine (ray start --head refuses without one), never in the user's.
    env = {**os.environ, **exports, "HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    port = str(free_port())  # the README's 6379 may be taken on a machine that runs tests
    ip = subprocess.run([sys.executable, "-c", "import ray._private.services as s; print(s.get_node_ip_address())"],
                        capture_output=True, text=True, check=True, env=env).stdout.strip()
    driver_only = tmp_path / "driver_only"
    make_photo_files(driver_only / "photos", 4)
    make_photo_files(tmp_path / "shared" / "photos", 6, seed=2)
    bundle = save(build_tiny_tagger(), tmp_path / "bundle")
    try:
        subprocess.run(token.split(), env=env, check=True, capture_output=True, timeout=120)
        assert (tmp_path / "home" / ".ray" / "auth_token").is_file()
        subprocess.run(head.replace("6379", port).split() + ["--num-cpus=1"], env=env, check=True, capture_output=True, timeout=120)
        # The other node: the same machine, but over driver_only/ an empty file system of its own.
        subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {driver_only} && "
                        + join.replace("HEAD_IP", ip).replace("6379", port) + " --num-cpus=1"],
                       env=env, check=True, capture_output=True, timeout=120)
        for _ in range(30):  # `ray status` shows a node once the autoscaler's report, every few seconds, has it
            status = subprocess.run(["ray", "status", f"--address={ip}:{port}"], env=env, capture_output=True, text=True, timeout=60)
            if status.returncode != 0 or status.stdout.count("node_") >= 2:
                break
            time.sleep(1)
        assert status.returncode == 0 and status.stdout.count("node_") >= 2, status.stdout + status.stderr

        def tag(source: Path, out: Path):
            return subprocess.run([sys.executable, "-m", "tagger.cli", "tag", str(source), "--out", str(out), "--model", str(bundle),
                                   "--engine", "ray", "--address", f"{ip}:{port}", "--workers", "2", "--batch-size", "2"],
                                  env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)

        refused = tag(driver_only / "photos", tmp_path / "refused.parquet")
        errors = [line for line in refused.stderr.splitlines() if line.startswith("tagger: error: ")]
        assert refused.returncode == 1 and len(errors) == 1, refused.stderr
        assert f"node {ip} (" in errors[0] and f"{driver_only / 'photos' / 'photo000.jpg'}: no such file" in errors[0], errors
        assert "SOURCE must be at the same path on every node" in errors[0]
        assert not (tmp_path / "refused.parquet").exists()  # refused before anything: no empty output left

        out = driver_only / "tags.parquet"  # a folder the other node does not have: only the driver writes it
        done = tag(tmp_path / "shared" / "photos", out)
        assert done.returncode == 0, done.stderr
        assert f"{out}: 6 tagged, 0 unchanged (kept), 0 failed" in done.stdout
        assert len(read_output(out)) == 6 and (read_output(out)["error"] == "").all()
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
