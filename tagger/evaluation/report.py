"""The evaluation as one self-contained HTML page: tables, a P@k plot, reliability diagrams, training
curves, sample photos.

Images are embedded as data URIs so the page can be mailed or archived as a single file.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from tagger.evaluation.evaluate import Evaluation, format_table

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } .scroll { overflow-x: auto; } img { max-width: 100%; } td, th { padding: 3px 9px; text-align: right; border-bottom: 1px solid #eee; }
th:first-child, td:first-child { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 14px; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 8px; } .card img { width: 100%; border-radius: 4px; }
.tag { display: inline-block; padding: 0 6px; margin: 2px; border-radius: 10px; font-size: 13px; }
.hit { background: #d6f5d6; } .miss { background: #f3f3f3; color: #777; } .user { background: #e6eefc; }
.method { font-weight: 600; font-size: 13px; margin-top: 6px; }
"""


def _img(data: bytes, mime: str = "image/png") -> str:
    return f'<img src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _table(results: dict) -> str:
    if not results:
        return "<p>none</p>"
    metrics = [m for m in next(iter(results.values())) if m != "photos"]
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = []
    for method, r in results.items():
        cells = "".join(f"<td>{r[m]:.4f}</td>" if isinstance(r[m], float) else f"<td>{r[m]}</td>" for m in metrics)
        rows.append(f"<tr><td>{html.escape(method)}</td>{cells}</tr>")
    return f"<div class='scroll'><table><tr><th>method</th>{head}</tr>{''.join(rows)}</table></div>"


def _pk_plot(ev: Evaluation) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for method, r in ev.tags.items():
        ks = [int(k[2:]) for k in r if k.startswith("P@")]
        ax.plot(ks, [r[f"P@{k}"] for k in ks], marker="o", label=method)
    ax.set_xlabel("k")
    ax.set_ylabel("P@k (user tags)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _reliability_plot(ev: Evaluation) -> bytes:
    """Predicted probability against the observed share of true tags, per bin, one line per calibrated row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfect")
    for row, c in ev.calibration.items():
        bins = c["bins"]
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o", label=f"{row} (ECE {c['ece']:.3f})")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed share of user tags")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_html(ev: Evaluation, path: Path, models: list[Path] = (), title: str = "tagger evaluation") -> Path:
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Split <b>{html.escape(ev.split)}</b>: {ev.photos} photos, {ev.left_out} left out for having no "
             f"in-vocabulary user tag. Models: {html.escape(', '.join(map(str, models)) or 'the shipped model')}</p>",
             "<h2>Against the photos' user tags</h2>", _table(ev.tags), _img(_pk_plot(ev))]
    if ev.versus_knn:
        parts.append("<p>P@5 minus kNN's, photo by photo on the same photos (95% paired-bootstrap interval):</p><ul>"
                     + "".join(f"<li><b>{html.escape(m)}</b> {d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], "
                               f"better on {d['a_better']} photos, worse on {d['b_better']}</li>" for m, d in ev.versus_knn.items())
                     + "</ul>")
    if ev.labels:
        parts += ["<h2>Against the 24 concept labels</h2>", _table(ev.labels),
                  "<p>A label's score is the best score of the words that name it: "
                  + "; ".join(f"<i>{html.escape(l)}</i>: {', '.join(map(html.escape, w))}" for l, w in ev.label_words.items()) + "</p>"]
    if ev.calibration:
        parts += ["<h2>Calibration</h2>",
                  f"<p>Each photo's {next(iter(ev.calibration.values()))['top']} best tags, binned by their score (the "
                  "estimated probability that the owner used the tag), against the share of them that the owner did use. "
                  "ECE: the count-weighted mean gap.</p>", _img(_reliability_plot(ev))]
    for model in models:
        curves = Path(model) / "train_curves.png"
        if curves.is_file():
            parts += [f"<h2>Training curves: {html.escape(str(model))}</h2>", _img(curves.read_bytes())]
    parts.append("<h2>Sample photos</h2><p>Predicted tags in green are among the photo's user tags.</p><div class='grid'>")
    for s in ev.samples:
        truth = set(s["truth"])
        card = [f"<div class='card'>{_img(Path(s['path']).read_bytes(), 'image/jpeg')}",
                f"<div class='method'>user tags</div>" + "".join(f"<span class='tag user'>{html.escape(t)}</span>" for t in s["user_tags"][:15])]
        for method, tags in s["predicted"].items():
            card.append(f"<div class='method'>{html.escape(method)}</div>"
                        + "".join(f"<span class='tag {'hit' if t in truth else 'miss'}'>{html.escape(t)}</span>" for t in tags))
        parts.append("".join(card) + "</div>")
    parts.append("</div>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


__all__ = ["write_html", "format_table"]
