"""Benchmark the HTTP service against tagging in process: requests/s and latency at 1, 8 and 32 clients.

Starts `tagger.service.app.serve` in a subprocess on a free loopback port, sends requests of one photo
each from N concurrent clients (asyncio + httpx), each level bounded by a request count and a time
limit, and compares with `Tagger.predict` on one photo per call in this process, on the same photos,
in the same run. "photos/pass" is how many photos the server's batching put in one forward pass.
The in-process rate is taken twice, with torch's default threads and with one thread: on a machine
busy with other work the default (one OpenMP thread per core) can be many times slower, and the
ratios are against the faster of the two, so that the service gets no credit for that.

    python bench/bench_service.py                                 # a tiny random model (fast backbone)
    python bench/bench_service.py --model /tmp/runs/paper --json bench-service.json

The clients run on the same machine as the server and take CPU from it: the figures are a lower
bound on what the server does for remote clients.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SUBSET_IMAGES = REPO.parent / "shared" / "datasets" / "mirflickr25k_subset" / "images"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model bundle (default: a tiny random model built in a temp folder)")
    parser.add_argument("--photos", type=Path, default=SUBSET_IMAGES, help="folder of photos (default: the shared subset; "
                        "random photos where it is absent)")
    parser.add_argument("--n-photos", type=int, default=32, help="distinct photos to cycle through")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels, comma separated")
    parser.add_argument("--requests", type=int, default=200, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=10.0, help="most seconds per level")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        model = args.model or build_tiny_model(Path(tmp) / "tiny")
        photos = pick_photos(args.photos, args.n_photos, Path(tmp) / "photos")
        # Other work on the machine changes every figure here: the load average says how much there was.
        print(f"model {model}, {len(photos)} photos from {photos[0].parent}, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)

        baselines = [bench_predict(model, photos, args.requests, args.seconds, threads) for threads in (None, 1)]
        for b in baselines:
            print(f"in process, {b['threads']} torch threads: {b['rate']:.1f} photos/s", flush=True)
        rows = []
        with Server(model) as server:
            data = [(p.name, p.read_bytes()) for p in photos]
            for clients in levels:
                row = asyncio.run(bench_level(server.url, data, clients, args.requests, args.seconds))
                rows.append(row)
                print(f"{clients} clients: {row['rate']:.1f} requests/s", flush=True)

    figures = {"model": str(args.model or "tiny"), "photos": len(photos), "cores": os.cpu_count(), "load_average": os.getloadavg()[0],
               "predict": baselines, "service": rows}
    print()
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


def build_tiny_model(path: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_tagger

    return build_tiny_tagger().save(path)


def pick_photos(folder: Path, n: int, spare: Path) -> list[Path]:
    if folder.is_dir():
        found = sorted(folder.glob("*.jpg"), key=lambda p: (len(p.name), p.name))[:n]
        if found:
            return found
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_photo_files

    return make_photo_files(spare, n, size=500)


def bench_predict(model: Path, photos: list[Path], most: int, seconds: float, threads: int | None = None) -> dict:
    """Tagger.predict on one photo per call (read, decode, features, sampling), in this process."""
    import torch

    from tagger.bundle import load

    if threads:
        torch.set_num_threads(threads)
    tagger = load(model)
    tagger.predict([photos[0]])  # warm up: the backbone is built on first use
    latencies = []
    start = time.perf_counter()
    while len(latencies) < most and time.perf_counter() - start < seconds:
        t = time.perf_counter()
        tagger.predict([photos[len(latencies) % len(photos)]])
        latencies.append(time.perf_counter() - t)
    return {"threads": torch.get_num_threads(), **summarize(latencies, time.perf_counter() - start)}


async def bench_level(url: str, data: list[tuple[str, bytes]], clients: int, most: int, seconds: float) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        before = (await http.get("/v1/health")).json()
        latencies: list[float] = []
        issued = 0
        start = time.perf_counter()

        async def client():
            nonlocal issued
            while issued < most and time.perf_counter() - start < seconds:
                name, photo = data[issued % len(data)]
                issued += 1
                t = time.perf_counter()
                r = await http.post("/v1/tag", files=[("files", (name, photo, "image/jpeg"))])
                r.raise_for_status()
                if r.json()["results"][0]["error"]:
                    raise RuntimeError(f"{name}: {r.json()['results'][0]['error']}")
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        after = (await http.get("/v1/health")).json()
    passes = after["forward_passes"] - before["forward_passes"]
    return {"clients": clients, **summarize(latencies, elapsed), "photos_per_pass": (after["photos"] - before["photos"]) / max(passes, 1)}


def summarize(latencies: list[float], elapsed: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "seconds": round(elapsed, 2), "rate": len(ms) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def table(f: dict) -> str:
    """The figures as a table; ratios are against the faster in-process rate."""
    best = max(b["rate"] for b in f["predict"])
    lines = [f"{'':30s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'photos/pass':>12s} {'vs predict':>11s}"]
    for b in f["predict"]:
        lines.append(f"{'Tagger.predict, ' + str(b['threads']) + ' torch threads':30s} {b['rate']:8.1f} {b['p50_ms']:8.1f} "
                     f"{b['p99_ms']:8.1f} {'1.0':>12s} {b['rate'] / best:10.2f}x")
    for r in f["service"]:
        lines.append(f"{'service, ' + str(r['clients']) + ' clients':30s} {r['rate']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
                     f"{r['photos_per_pass']:12.1f} {r['rate'] / best:10.2f}x")
    return "\n".join(lines)


class Server:
    """`tagger.service.app.serve` in a subprocess on a free loopback port, up once /v1/health answers."""

    def __init__(self, model: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model

    def __enter__(self):
        import httpx

        code = "import sys; from tagger.service.app import serve; serve(sys.argv[1], port=int(sys.argv[2]), log_level='warning')"
        self.process = subprocess.Popen([sys.executable, "-c", code, str(self.model), str(self.port)])
        deadline = time.monotonic() + 180  # a real bundle loads its backbone at start
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the server did not start within 180 s")
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    main()
