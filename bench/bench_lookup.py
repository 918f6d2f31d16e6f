"""Tag look-up: FAISS search of every generated sample of a batch of photos, against numpy and at 250,000 words.

    python bench/bench_lookup.py --photos 32 --samples 100 --vocab 250000

Part 1, the product's own case: the shipped model's vocabulary in its exact (flat) FAISS index,
queried with all samples of a batch of photos in one search (32 photos x 100 samples, the
model's number of nearest words each: 100 for the shipped model), against numpy brute force
(matrix product, argpartition, sort) on the very same unit vectors. The ids must be equal; where two words tie in score at the cut-off, either may
come first, and that is allowed and counted. The generated samples come from the shipped generator
on real photo features where the shared subset is present, else on features drawn around the
generator's own feature statistics (--synthetic-features).

Part 2, a large vocabulary: --vocab synthetic 200-d vectors in Gaussian clusters (spread inside a
cluster as large as between centres, as in tests/test_index.py) in the HNSW index
(`TagIndex(..., kind="hnsw")` with the default `IndexConfig`; its default threshold picks HNSW above
100,000 words anyway), against the exact flat index: build time, search speed-up and recall@20 of
the approximate ids, for the default ef_search and larger ones.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

from harness import IMAGES, emit, machine, median, print_rows, rel, row

from embeddings.index import IndexConfig, TagIndex, unit_rows  # noqa: E402


def numpy_search(unit_vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact cosine top-k by brute force: scores (N, k), ids (N, k) and the full (N, V) cosine table."""
    cos = unit_rows(queries) @ unit_vectors.T
    part = np.argpartition(-cos, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(cos, part, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(cos, ids, axis=1), ids, cos


def compare_ids(faiss_ids: np.ndarray, faiss_scores: np.ndarray, np_ids: np.ndarray, cos: np.ndarray, tol: float = 1e-5) -> dict:
    """Rows with the same ids in the same order; rows that differ only among words tied in score; rows truly different."""
    same = ties = different = 0
    for f, s, n, c in zip(faiss_ids, faiss_scores, np_ids, cos):
        if np.array_equal(f, n):
            same += 1
            continue
        # Allowed: the same scores position by position (so swaps are among equal scores), and any word in one
        # list but not the other scores the same as the k-th best.
        kth = c[n[-1]]
        swapped = np.setxor1d(f, n)
        if np.allclose(np.sort(c[f])[::-1], np.sort(c[n])[::-1], atol=tol) and np.all(np.abs(c[swapped] - kth) <= tol) \
                and np.allclose(s, c[f], atol=tol):
            ties += 1
        else:
            different += 1
    return {"rows": len(faiss_ids), "same": same, "ties_only": ties, "different": different}


def product_queries(args) -> tuple[np.ndarray, np.ndarray, str, list[str], int]:
    """(word vectors in the index, generated samples, where the features came from, words, the model's neighbours per sample)."""
    import torch

    from tagger.bundle import load
    from tagger.shipped import default_model_path

    tagger = load(args.model or default_model_path())
    G = tagger.generator
    if not args.synthetic_features and args.images.is_dir():
        from pipelines.scan import list_images

        paths = list_images(args.images)[: args.photos]
        from pipelines.images import load_image

        images = [load_image(p, min_side=tagger.backbone.preprocessing.resize) for p in paths]
        features = tagger.conditions(tagger.read(images).features)  # what G is conditioned on (the photo, its neighbours' votes)
        source = f"{len(paths)} shared photos"
    else:
        rng = np.random.default_rng(args.seed)
        mean, scale = G.feature_mean.cpu().numpy(), G.feature_scale.cpu().numpy()
        features = np.clip(mean + scale * rng.standard_normal((args.photos, len(mean))), 0, None).astype(np.float32)
        source = f"{args.photos} synthetic feature vectors"
    with torch.inference_mode():
        noise = G.sample_noise(args.samples, torch.Generator().manual_seed(args.seed))
        x = torch.as_tensor(features).repeat_interleave(args.samples, dim=0)
        samples = G(noise.repeat(len(features), 1), x).float().numpy()
    return tagger.targets, samples, source, tagger.words, tagger.sampling.neighbours


def clustered(n: int, dim: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    return (centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, dim), dtype=np.float32)).astype(np.float32)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return median(times), out, times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the shipped one)")
    parser.add_argument("--images", type=Path, default=IMAGES, help="photos for part 1 (default: the shared subset)")
    parser.add_argument("--synthetic-features", action="store_true", help="part 1 without photos: features drawn around "
                        "the generator's feature statistics")
    parser.add_argument("--photos", type=int, default=32, help="photos in the part 1 batch")
    parser.add_argument("--samples", type=int, default=100, help="generated samples per photo")
    parser.add_argument("--k", type=int, default=0, help="part 1: nearest words per sample (default: the model's)")
    parser.add_argument("--big-k", type=int, default=20, help="part 2: nearest words per query (recall@k)")
    parser.add_argument("--repeats", type=int, default=10, help="timed searches in part 1")
    parser.add_argument("--vocab", type=int, default=250_000, help="part 2 vocabulary size (0 skips part 2)")
    parser.add_argument("--dim", type=int, default=200, help="part 2 vector width")
    parser.add_argument("--queries", type=int, default=1000, help="part 2 queries (10 photos x 100 samples)")
    parser.add_argument("--big-repeats", type=int, default=3, help="timed searches in part 2")
    parser.add_argument("--ef", default="256,512", help="part 2: ef_search values tried beside the default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures and table rows to this file")
    args = parser.parse_args(argv)

    # Part 1: the product's vocabulary and queries.
    vectors, samples, source, words, neighbours = product_queries(args)
    args.k = args.k or neighbours
    index = TagIndex(words, vectors)
    unit = unit_rows(vectors)
    faiss_t, (f_scores, f_ids), faiss_runs = timed(lambda: index.search_ids(samples, args.k), args.repeats)
    np_t, (n_scores, n_ids, cos), np_runs = timed(lambda: numpy_search(unit, samples, args.k), args.repeats)
    check = compare_ids(f_ids, f_scores, n_ids, cos)
    equal = check["different"] == 0
    q = len(samples)
    rows = [row("look-up: FAISS flat, batch of samples", f"{faiss_t * 1e3:.1f} ms per {q:,} queries",
                f"{np_t * 1e3:.1f} ms numpy brute force", np_t / faiss_t, None,
                f"{len(words):,} words x {vectors.shape[1]}-d, {args.photos} photos x {args.samples} samples ({source}), "
                f"k={args.k}, median of {args.repeats}; ratio = speed-up; ids equal in {check['same']}/{q} rows, "
                f"{check['ties_only']} differ only by ties, {check['different']} differ")]
    result = {"bench": "lookup", "part1": {"vocabulary": len(words), "dim": int(vectors.shape[1]), "queries": q, "k": args.k,
                                           "features": source, "faiss_ms": round(faiss_t * 1e3, 2), "numpy_ms": round(np_t * 1e3, 2),
                                           "speedup": float(f"{np_t / faiss_t:.3g}"), "ids": check, "equal": equal,
                                           "faiss_runs_ms": [round(t * 1e3, 2) for t in faiss_runs],
                                           "numpy_runs_ms": [round(t * 1e3, 2) for t in np_runs]}}
    print(f"part 1: {len(words):,} words, {q:,} queries ({args.photos} photos x {args.samples} samples, {source}), k={args.k}")
    print(f"  FAISS flat (TagIndex.search_ids): {faiss_t * 1e3:8.1f} ms")
    print(f"  numpy brute force               : {np_t * 1e3:8.1f} ms  ({np_t / faiss_t:.1f}x the FAISS time)")
    print(f"  ids: {check['same']} rows equal, {check['ties_only']} differ only among tied words, {check['different']} differ")

    # Part 2: a large synthetic vocabulary, HNSW against exact search.
    if args.vocab:
        rng = np.random.default_rng(args.seed)
        centers = rng.standard_normal((1000, args.dim), dtype=np.float32)
        big = clustered(args.vocab, args.dim, rng, centers)
        queries = clustered(args.queries, args.dim, rng, centers)
        big_words = [f"w{i}" for i in range(args.vocab)]
        config = IndexConfig()
        start = time.perf_counter()
        hnsw = TagIndex(big_words, big, config, kind="hnsw")
        hnsw_build = time.perf_counter() - start
        start = time.perf_counter()
        flat = TagIndex(big_words, big, config, kind="flat")
        flat_build = time.perf_counter() - start
        exact_t, (_, exact), exact_runs = timed(lambda: flat.search_ids(queries, args.big_k), args.big_repeats)
        efs = [config.ef_search] + [int(e) for e in args.ef.split(",") if e and int(e) != config.ef_search]
        sweep = []
        for ef in efs:
            hnsw.config = IndexConfig(**{**config.__dict__, "ef_search": ef})
            t, (_, approx), runs = timed(lambda: hnsw.search_ids(queries, args.big_k), args.big_repeats)
            recall = float(knn_intersection_measure(np.asarray(approx), np.asarray(exact)))  # recall@k against the exact search
            sweep.append({"ef_search": ef, "ms": round(t * 1e3, 2), "speedup": float(f"{exact_t / t:.3g}"), "recall_at_k": round(recall, 4),
                          "runs_ms": [round(r * 1e3, 2) for r in runs]})
        hnsw.config = config
        print(f"part 2: {args.vocab:,} synthetic {args.dim}-d words, {args.queries:,} queries, k={args.big_k}; "
              f"HNSW M={config.hnsw_m}, efConstruction={config.ef_construction}")
        print(f"  build: HNSW {hnsw_build:.1f} s, flat {flat_build:.2f} s")
        print(f"  exact (flat) search: {exact_t * 1e3:8.1f} ms")
        for s in sweep:
            print(f"  HNSW ef_search {s['ef_search']:4d}: {s['ms']:8.1f} ms, {s['speedup']:5.1f}x faster, recall@{args.big_k} {s['recall_at_k']:.4f}")
        for s in sweep:
            default = s["ef_search"] == config.ef_search
            rows.append(row(f"look-up: HNSW, {args.vocab:,} words, ef_search {s['ef_search']}" + (" (default)" if default else ""),
                            f"{s['ms']:.0f} ms per {args.queries:,} queries, recall@{args.big_k} {s['recall_at_k']:.3f}",
                            f"{exact_t * 1e3:.0f} ms exact flat search", s["speedup"], None,
                            (f"synthetic clustered {args.dim}-d vectors; ratio = speed-up; build {hnsw_build:.0f} s (flat {flat_build:.1f} s); "
                             f"median of {args.big_repeats}") if default else f"same index and queries; ratio = speed-up"))
        result["part2"] = {"vocabulary": args.vocab, "dim": args.dim, "queries": args.queries, "k": args.big_k,
                           "hnsw_m": config.hnsw_m, "ef_construction": config.ef_construction,
                           "hnsw_build_s": round(hnsw_build, 2), "flat_build_s": round(flat_build, 3),
                           "exact_ms": round(exact_t * 1e3, 2), "exact_runs_ms": [round(t * 1e3, 2) for t in exact_runs], "ef_search": sweep}
    result.update(machine=machine(), rows=rows, images=rel(args.images))
    print_rows(rows)
    return emit(result, args.json)


if __name__ == "__main__":
    main()
