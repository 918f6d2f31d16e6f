"""Hostile input: peak memory of the service, `predict` and `tag` under the attacks the hardening issue found.

    python bench/bench_hostile.py --json hostile.json

The service (`tagger serve`, the shipped model) runs in a subprocess on a free loopback port with
its own temporary folder. It gets ordinary requests first (the baseline), then, with an innocent
photo in every request: a 100000x1 PNG; six 11000x11000 1-bit PNGs (87 KB in all); a chunked
upload of up to 1 GB; 200 concurrent clients trickling a request each while /v1/health is timed.
The figures: the server's peak resident memory (VmHWM) against the baseline's, whether every
innocent photo was tagged and no answer was a 5xx, the most bytes in its temporary folder, and
the p99 of /v1/health. Then `tagger predict` and `tagger tag` run once on each hostile file (a thin
PNG, a FIFO, a link to /dev/zero), each in a fresh process: peak memory, seconds, and the lines
they print.
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import IMAGES, child_env, emit, machine, print_rows, row, run_measured, tagger_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(size, mode="L", colour=128) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


def vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def temp_bytes(pid: int, folder: Path) -> int:
    """Bytes in the server's temporary files: the open ones under `folder`, deleted or not (an upload's spool
    file is unlinked as it is made, so only the process's descriptors show it)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(folder)):
                total += os.stat(fd).st_size
        except OSError:
            pass
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def post(port: int, files: list[tuple[str, bytes]], timeout: float = 300) -> tuple[int, dict]:
    import httpx

    r = httpx.post(f"http://127.0.0.1:{port}/v1/tag", files=[("files", (n, d, "application/octet-stream")) for n, d in files],
                   timeout=timeout)
    return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else {})


def chunked_upload(port: int, total: int, tmp: Path, pid: int) -> tuple[str, int, int]:
    """Stream up to `total` bytes as one photo; (status line, bytes sent, most bytes seen in the server's temp folder)."""
    import select

    most = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        sock.sendall(b"%x\r\n" % len(head) + head + b"\r\n")
        chunk = b"%x\r\n" % (1 << 20) + b"x" * (1 << 20) + b"\r\n"
        sent = 0
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += 1 << 20
            if sent % (16 << 20) == 0:
                most = max(most, temp_bytes(pid, tmp))
        most = max(most, temp_bytes(pid, tmp))
        sock.settimeout(30)
        try:
            answer = sock.recv(4096).split(b"\r\n", 1)[0].decode()
        except OSError as e:
            answer = f"connection closed ({e})"
    return answer, sent, most


def trickle(port: int, stop: threading.Event) -> None:
    """A client that sends a request's headers and then one byte every second."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
            while not stop.wait(1.0):
                sock.sendall(b"x")
    except OSError:
        pass  # the server timed us out: what it should do


def health_p99(port: int, n: int = 100) -> float:
    import httpx

    times = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            t = time.perf_counter()
            client.get(f"http://127.0.0.1:{port}/v1/health")
            times.append(time.perf_counter() - t)
            time.sleep(0.02)
    times.sort()
    return times[min(len(times) - 1, int(0.99 * len(times)))]


def service(args) -> tuple[dict, list[dict]]:
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-tmp-"))
    server = subprocess.Popen(tagger_cli("serve", "--port", port, *(["--model", args.model] if args.model else [])),
                              env=child_env(TMPDIR=str(tmp), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    innocent = (IMAGES / "im1.jpg").read_bytes()
    figures: dict = {}
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the server did not start: {server.stderr.read() if server.poll() is not None else ''}")
                time.sleep(0.2)
        for _ in range(10):
            post(port, [("ok.jpg", innocent)])
        figures["baseline_peak_mb"] = round(vm_hwm_mb(server.pid), 1)
        statuses, innocent_ok = [], []
        attacks = {"thin": [("thin.png", png((100_000, 1)))], "bits": [(f"b{i}.png", png((11000, 11000), "1", 1)) for i in range(6)]}
        for name, files in attacks.items():
            for _ in range(3):
                status, body = post(port, files + [("ok.jpg", innocent)])
                statuses.append(status)
                innocent_ok.append(status == 200 and bool(body["results"][-1]["tags"]))
        figures["attack_statuses"] = sorted(set(statuses))
        figures["innocent_tagged"] = f"{sum(innocent_ok)} of {len(innocent_ok)}"
        answer, sent, most_tmp = chunked_upload(port, args.upload_mb << 20, tmp, server.pid)
        figures.update(upload_answer=answer, upload_sent_mb=round(sent / 2**20, 1), temp_most_mb=round(most_tmp / 2**20, 1))
        stop = threading.Event()
        clients = [threading.Thread(target=trickle, args=(port, stop), daemon=True) for _ in range(args.clients)]
        for c in clients:
            c.start()
        time.sleep(2)
        figures["health_p99_s"] = round(health_p99(port), 3)
        status, body = post(port, [("ok.jpg", innocent)])
        figures["innocent_during_trickle"] = status == 200 and bool(body["results"][0]["tags"])
        stop.set()
        figures["peak_mb"] = round(vm_hwm_mb(server.pid), 1)
    finally:
        server.terminate()
        server.wait(30)
    limit_mb = 32 * (20 + 64 / 1024)  # the default limits: 32 photos of 20 MB, plus room for multipart headers
    rows = [
        row("hostile: service peak memory under the attacks", f"{figures['peak_mb']:.0f} MB", f"{figures['baseline_peak_mb']:.0f} MB after normal requests",
            figures["peak_mb"] / 2048, "ratio <= 1.0",
            note=f"target: peak < 2 GB (ratio = peak / 2048 MB); innocent photos tagged {figures['innocent_tagged']}, statuses "
                 f"{figures['attack_statuses']}; a chunked upload stopped with '{figures['upload_answer']}' after "
                 f"{figures['upload_sent_mb']} MB sent, temp files at most {figures['temp_most_mb']} MB (limit {limit_mb:.0f} MB)"),
        row(f"hostile: /v1/health p99 with {args.clients} trickling clients", f"{figures['health_p99_s'] * 1000:.0f} ms", "500 ms",
            figures["health_p99_s"] / 0.5, "ratio <= 1.0", note=f"an innocent photo tagged meanwhile: {figures['innocent_during_trickle']}"),
    ]
    return figures, rows


def cli(args) -> tuple[dict, list[dict]]:
    folder = Path(tempfile.mkdtemp(prefix="bench-hostile-files-"))
    thin = folder / "thin.png"
    thin.write_bytes(png((8000, 1)))
    fifo, zero = folder / "fifo.jpg", folder / "zero.jpg"
    os.mkfifo(fifo)
    os.symlink("/dev/zero", zero)
    figures, worst = {}, (0.0, 0.0)
    for name, path in (("thin", thin), ("fifo", fifo), ("zero", zero)):
        for command in ("predict", "tag"):
            cmd = tagger_cli(command, path, *(["--out", folder / f"{name}.csv"] if command == "tag" else []),
                             *(["--model", args.model] if args.model else []))
            r = run_measured(cmd, env=child_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
            # The lines without the temporary folder, which means nothing once the run is over.
            lines = [l.replace(f"{folder}/", "") for l in (r["stdout"] + r["stderr"]).splitlines() if l.strip()]
            figures[f"{command} {name}"] = {"seconds": round(r["seconds"], 2), "peak_rss_mb": round(r["peak_rss_mb"], 1),
                                            "code": r["returncode"], "output": lines[-2:]}
            worst = (max(worst[0], r["peak_rss_mb"]), max(worst[1], r["seconds"]))
    rows = [row("hostile: predict/tag on each hostile file, worst peak memory", f"{worst[0]:.0f} MB", "1536 MB", worst[0] / 1536,
                "ratio <= 1.0", note=f"slowest {worst[1]:.1f} s (target < 10 s); a thin PNG, a FIFO and a /dev/zero link, each alone")]
    return figures, rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--clients", type=int, default=200, help="trickling clients")
    parser.add_argument("--upload-mb", type=int, default=1024, help="size of the chunked upload attempted")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    service_figures, rows = service(args)
    cli_figures, cli_rows = cli(args)
    rows += cli_rows
    print_rows(rows)
    return emit({"machine": machine(), "service": service_figures, "cli": cli_figures, "rows": rows}, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
