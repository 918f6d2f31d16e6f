"""Hostile input: peak memory of the service, `predict` and `tag` under the attacks the hardening and security issues found.

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

The security issue's attacks, in the same run: on the service, requests with `top_k=10001` mixed
among 50 innocent ones, two progressive-JPEG scan bombs (11000x11000, 1,000 repeated scans) and two
11300x11300 16-bit PNGs at once, six concurrent uploads of 31 files of 19.8 MB each; an innocent
photo is timed every half second through all of them, and the resident memory after three normal
requests is compared with its idle level. `predict` on the scan bomb, the 16-bit PNG, a 121 MP 16-bit
TIFF and a bundle with one 1 MB word. `tag --sidecar xmp` and `--sidecar txt` on a library whose
sidecars are symlinks out of it (one dangling, towards a `.pth` file), with a keyword carrying a
newline and code, an owner's `photo.jpg.txt`, and a journal that is a symlink: every file outside
the library is hashed before and after.
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

from harness import IMAGES, REPO, child_env, emit, machine, print_rows, row, run_measured, tagger_cli


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


def scan_bomb_jpeg(side: int = 11000, repeats: int = 1000) -> bytes:
    """A flat grey progressive JPEG whose last scan (every AC coefficient refined) is repeated: each copy is a
    few hundred bytes and a pass of the decoder over every block of the full image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    last = data.rfind(b"\xff\xda")
    scan = data[data.rfind(b"\xff\xc4", 0, last):-2]  # its Huffman tables and the scan, up to the EOI
    return data[:-2] + scan * repeats + data[-2:]


def gray16(size, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("I;16", size, 30000).save(buf, fmt, **({"compression": "tiff_deflate"} if fmt == "TIFF" else {}))
    return buf.getvalue()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (links not followed) -> a hash of its bytes, or where a link points."""
    import hashlib

    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            if p.is_symlink():
                found[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                found[str(p)] = hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
    return found


class Watch:
    """An innocent photo posted every half second in a thread: its slowest answer and every non-200."""

    def __init__(self, port: int, photo: bytes):
        self.port, self.photo, self.times, self.bad = port, photo, [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            t = time.perf_counter()
            try:
                status, body = post(self.port, [("ok.jpg", self.photo)], timeout=120)
                if status != 200 or not body["results"][0]["tags"]:
                    self.bad.append(status)
            except Exception as e:  # noqa: BLE001 - a dropped connection is a failure to count, not to stop on
                self.bad.append(type(e).__name__)
            self.times.append(time.perf_counter() - t)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(150)


def vm_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def security_attacks(port: int, pid: int, innocent: bytes, args) -> dict:
    """The security issue's attacks on a running service, an innocent photo timed throughout."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    figures: dict = {}
    idle = vm_rss_mb(pid)
    with Watch(port, innocent) as watch:
        # A request with an impossible parameter among innocent ones that share its forward pass.
        def one(i: int):
            q = "?top_k=10001" if i % 5 == 0 else ""
            r = httpx.post(f"http://127.0.0.1:{port}/v1/tag{q}", files=[("files", ("ok.jpg", innocent, "image/jpeg"))], timeout=120)
            return i % 5 == 0, r.status_code
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(one, range(60)))
        figures["bad_param_statuses"] = sorted({s for bad, s in answers if bad})
        figures["innocent_failed_beside_bad_param"] = sum(1 for bad, s in answers if not bad and s != 200)
        # Decoding bombs, two at a time.
        for name, data in (("scan_bomb", scan_bomb_jpeg(repeats=args.scans)), ("gray16", gray16((11300, 11300)))):
            t = time.perf_counter()
            with ThreadPoolExecutor(2) as pool:
                res = list(pool.map(lambda f: post(port, [f, ("ok.jpg", innocent)]), [(f"{name}{i}.png", data) for i in range(2)]))
            figures[name] = {"bytes": len(data), "seconds": round(time.perf_counter() - t, 1), "statuses": [r[0] for r in res],
                             "errors": sorted({r[1]["results"][0]["error"] or "" for r in res if r[0] == 200}),
                             "innocent_tagged": sum(1 for r in res if r[0] == 200 and r[1]["results"][1]["tags"])}
        # Six concurrent uploads of 31 files of 19.8 MB, streamed from one file on disk.
        blob = Path(tempfile.mkdtemp(prefix="bench-hostile-upload-")) / "big.jpg"
        blob.write_bytes(os.urandom(int(19.8 * 2**20)))

        def upload(_):
            handles = [open(blob, "rb") for _ in range(31)]
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/tag", files=[("files", (f"b{i}.jpg", h, "image/jpeg")) for i, h in enumerate(handles)],
                               timeout=600)
                return r.status_code
            except httpx.HTTPError as e:
                return type(e).__name__
            finally:
                for h in handles:
                    h.close()
        t = time.perf_counter()
        with ThreadPoolExecutor(6) as pool:
            figures["big_upload_statuses"] = sorted(map(str, pool.map(upload, range(6))))
        figures["big_upload_seconds"] = round(time.perf_counter() - t, 1)
        blob.unlink()
    for _ in range(3):
        post(port, [("ok.jpg", innocent)])
    figures.update(idle_rss_mb=round(idle, 1), after_rss_mb=round(vm_rss_mb(pid), 1),
                   innocent_slowest_s=round(max(watch.times, default=float("nan")), 2), innocent_requests=len(watch.times),
                   innocent_failed=[str(b) for b in watch.bad])
    return figures


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
        figures["security"] = security_attacks(port, server.pid, innocent, args)
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
    sec = figures["security"]
    rows += [
        row("hostile: innocent photo's slowest answer during the attacks", f"{sec['innocent_slowest_s']:.2f} s", "2 s",
            sec["innocent_slowest_s"] / 2, "ratio <= 1.0",
            note=f"{sec['innocent_requests']} innocent requests, failed: {sec['innocent_failed'] or 'none'}; beside top_k=10001 "
                 f"(answered {sec['bad_param_statuses']}): {sec['innocent_failed_beside_bad_param']} innocent failed; scan bombs "
                 f"{sec['scan_bomb']['statuses']} in {sec['scan_bomb']['seconds']} s, 16-bit PNGs {sec['gray16']['statuses']} in "
                 f"{sec['gray16']['seconds']} s; six 614 MB uploads {sec['big_upload_statuses']} in {sec['big_upload_seconds']} s"),
        row("hostile: service memory after the attacks", f"{sec['after_rss_mb']:.0f} MB", f"{sec['idle_rss_mb']:.0f} MB idle",
            sec["after_rss_mb"] / sec["idle_rss_mb"], "ratio <= 1.2", note="resident memory after three normal requests"),
    ]
    return figures, rows


def cli(args) -> tuple[dict, list[dict]]:
    folder = Path(tempfile.mkdtemp(prefix="bench-hostile-files-"))
    thin = folder / "thin.png"
    thin.write_bytes(png((8000, 1)))
    fifo, zero = folder / "fifo.jpg", folder / "zero.jpg"
    os.mkfifo(fifo)
    os.symlink("/dev/zero", zero)
    bomb, g16, t16 = folder / "scans.jpg", folder / "gray16.png", folder / "gray16.tif"
    bomb.write_bytes(scan_bomb_jpeg(repeats=args.scans))
    g16.write_bytes(gray16((11300, 11300)))
    t16.write_bytes(gray16((11000, 11000), "TIFF"))
    figures, worst = {}, (0.0, 0.0)
    for name, path in (("thin", thin), ("fifo", fifo), ("zero", zero), ("scan_bomb", bomb), ("gray16_png", g16), ("gray16_tiff", t16)):
        for command in (("predict", "tag") if name in ("thin", "fifo", "zero") else ("predict",)):
            cmd = tagger_cli(command, path, *(["--out", folder / f"{name}.csv"] if command == "tag" else []),
                             *(["--model", args.model] if args.model else []))
            r = run_measured(cmd, env=child_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
            # The lines without the temporary folder, which means nothing once the run is over.
            lines = [l.replace(f"{folder}/", "") for l in (r["stdout"] + r["stderr"]).splitlines() if l.strip()]
            figures[f"{command} {name}"] = {"seconds": round(r["seconds"], 2), "peak_rss_mb": round(r["peak_rss_mb"], 1),
                                            "code": r["returncode"], "output": lines[-2:]}
            worst = (max(worst[0], r["peak_rss_mb"]), max(worst[1], r["seconds"]))
    word = big_word_bundle(folder, args.model)
    r = run_measured(tagger_cli("predict", IMAGES / "im1.jpg", "--model", word), env=child_env(OMP_NUM_THREADS="1"))
    figures["predict big_word_bundle"] = {"seconds": round(r["seconds"], 2), "peak_rss_mb": round(r["peak_rss_mb"], 1),
                                          "code": r["returncode"], "output": (r["stdout"] + r["stderr"]).strip().splitlines()[-1:]}
    worst = (max(worst[0], r["peak_rss_mb"]), max(worst[1], r["seconds"]))
    rows = [row("hostile: predict/tag on each hostile file, worst peak memory", f"{worst[0]:.0f} MB", "1536 MB", worst[0] / 1536,
                "ratio <= 1.0", note=f"slowest {worst[1]:.1f} s (target < 10 s); a thin PNG, a FIFO, a /dev/zero link, a scan bomb, "
                                     "an 11300x11300 16-bit PNG, a 121 MP 16-bit TIFF, a bundle with a 1 MB word, each alone")]
    outside, changed = library_attacks(folder, args.model)
    figures["library"] = changed
    rows.append(row("hostile: files outside the library created or changed by tag", f"{len(changed['outside_changed'])}", "0",
                    len(changed["outside_changed"]), "ratio <= 0",
                    note=f"--sidecar xmp then txt; exit codes {changed['codes']}; the owner's notes kept: {changed['notes_kept']}"))
    return figures, rows


def big_word_bundle(folder: Path, model: Path | None) -> Path:
    """A copy of the bundle whose first word is a million characters long (in its vocabulary and its vectors)."""
    import json
    import shutil

    import numpy as np

    src = Path(model) if model else REPO / "tagger" / "assets" / "model"
    dest = folder / "big-word-model"
    shutil.copytree(src, dest)
    big = "a" * 1_000_000
    with np.load(dest / "word_vectors.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    old = str(arrays["words"][0])
    arrays["words"] = np.array([big] + [str(w) for w in arrays["words"][1:]])
    np.savez(dest / "word_vectors.npz", **arrays)
    vocab = json.loads((dest / "vocabulary.json").read_text())
    vocab["words"] = [big if w == old else w for w in vocab["words"]]
    (dest / "vocabulary.json").write_text(json.dumps(vocab))
    return dest


def library_attacks(folder: Path, model: Path | None) -> tuple[dict, dict]:
    """`tag` with sidecars on a stranger's library whose links point out of it; what changed outside."""
    from PIL import Image

    lib, outside, results = folder / "library", folder / "outside", folder / "results"
    for d in (lib, outside, results):
        d.mkdir()
    keyword = "beach\nimport os; os.system('touch " + str(outside / "pwned") + "')"
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag><rdf:li>'
           + keyword + '</rdf:li></rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>')
    photo = Image.open(IMAGES / "im1.jpg").convert("RGB")
    photo.save(lib / "beach.jpg", xmp=xmp.encode())
    photo.save(lib / "notes.jpg")
    photo.save(lib / "linked.jpg")
    (lib / "beach.jpg.xmp").symlink_to(outside / "site-packages" / "zz.pth")  # dangling, in a folder that does not exist
    (lib / "notes.jpg.txt").write_text("the owner's notes\n")
    (outside / "target.txt").write_text("a file outside the library\n")
    (lib / "linked.jpg.txt").symlink_to(outside / "target.txt")
    (lib / "linked.jpg.xmp").symlink_to(outside / "target.xmp")
    (outside / "journal.txt").write_text("another file\n")
    (results / "o.csv.journal.jsonl").symlink_to(outside / "journal.txt")
    before = snapshot(outside)
    codes = []
    for kind in ("xmp", "txt"):
        r = run_measured(tagger_cli("tag", lib, "--out", results / "o.csv", "--sidecar", kind, *(["--model", model] if model else [])),
                         env=child_env(OMP_NUM_THREADS="1"))
        codes.append(r["returncode"])
    after = snapshot(outside)
    changed = sorted(k.replace(f"{outside}/", "") for k in set(before) | set(after) if before.get(k) != after.get(k))
    return outside, {"outside_changed": changed, "codes": codes,
                     "notes_kept": (lib / "notes.jpg.txt").read_text() == "the owner's notes\n"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--clients", type=int, default=200, help="trickling clients")
    parser.add_argument("--upload-mb", type=int, default=1024, help="size of the chunked upload attempted")
    parser.add_argument("--scans", type=int, default=1000, help="repeated scans of the progressive-JPEG bomb")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    service_figures, rows = service(args)
    cli_figures, cli_rows = cli(args)
    rows += cli_rows
    print_rows(rows)
    return emit({"machine": machine(), "service": service_figures, "cli": cli_figures, "rows": rows}, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
