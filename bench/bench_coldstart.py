"""Cold start: wall time of `tagger predict one.jpg` in a fresh process vs `python -c "import torch, torchvision"`.

    python bench/bench_coldstart.py --repeats 5

Both commands run alternately in fresh processes (median of --repeats), so what the comparison
leaves is what tagger adds on top of importing torch: its own imports, loading the model bundle
(the shipped one unless --model), building the backbone, decoding and tagging one photo. The
target is at most 2.5 times the bare import.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from harness import IMAGES, child_env, emit, machine, median, print_rows, rel, row, run_measured, tagger_cli

IMPORT_TORCH = [sys.executable, "-c", "import torch, torchvision"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photo", type=Path, default=IMAGES / "im4484.jpg", help="photo to tag (default: one of the shared "
                        "subset; a generated one where it is absent)")
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the figures and table rows to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        photo = args.photo
        if not photo.is_file():
            from PIL import Image

            photo = Path(tmp) / "one.jpg"
            Image.new("RGB", (128, 96), (200, 120, 40)).save(photo)
        cmd = tagger_cli("predict", photo, *(["--model", args.model] if args.model else []))
        env = child_env(TAGGER_CACHE=str(Path(tmp) / "cache"))
        # One untimed run of each first: the OS file cache then holds torch's libraries for both.
        warm = run_measured(cmd, env)
        if warm["returncode"] != 0:
            sys.exit(f"tagger predict failed:\n{warm['stderr']}")
        run_measured(IMPORT_TORCH, env)
        predict_s, import_s = [], []
        for _ in range(args.repeats):
            predict_s.append(run_measured(cmd, env)["seconds"])
            import_s.append(run_measured(IMPORT_TORCH, env)["seconds"])

    p, i = median(predict_s), median(import_s)
    rows = [row("cold start: tagger predict, 1 photo", f"{p:.2f} s", f'{i:.2f} s python -c "import torch, torchvision"',
                p / i, "ratio <= 2.5", f"fresh processes, median of {args.repeats}, shipped model" if not args.model else
                f"fresh processes, median of {args.repeats}")]
    result = {"bench": "coldstart", "photo": rel(photo) if photo == args.photo else "generated", "repeats": args.repeats,
              "predict_runs_s": [round(t, 3) for t in predict_s], "import_runs_s": [round(t, 3) for t in import_s],
              "output": warm["stdout"].strip().split(": ", 1)[-1], "machine": machine(), "rows": rows}
    print(f"cold start, median of {args.repeats} fresh processes each")
    print(f"  tagger predict {rel(photo) if photo == args.photo else 'one.jpg'}: {p:6.2f} s  (runs {', '.join(f'{t:.2f}' for t in predict_s)})")
    print(f"  import torch, torchvision : {i:6.2f} s  (runs {', '.join(f'{t:.2f}' for t in import_s)})")
    print_rows(rows)
    return emit(result, args.json)


if __name__ == "__main__":
    main()
