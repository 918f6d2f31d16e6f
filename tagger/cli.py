"""The `tagger` command line: train, predict, tag, untag, features. The one outer layer of the project.

Errors a user can cause (a missing file, a bad photo, a broken bundle) print one line naming the
file and the problem and exit non-zero; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import sys
import shutil
from pathlib import Path
from enum import Enum
from typing import Annotated, Optional

import typer

from pipelines.errors import TaggerError
from pipelines.keywords import DEFAULT_ROOT
from pipelines.scan import DEFAULT_EXCLUDE_DIRS

app = typer.Typer(
    help="Tag photos with a conditional GAN over a word2vec tag space (Mirza & Osindero 2014).\n\n"
    "Example:  tagger predict beach.jpg",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
state = {"debug": False}

ModelOpt = Annotated[Optional[Path], typer.Option("--model", "-m", help="model bundle folder (default: $TAGGER_MODEL, else the model shipped with tagger)")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N or mps (default: the best available)")]
class Runtime(str, Enum):
    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class SidecarKind(str, Enum):
    xmp = "xmp"
    txt = "txt"


class SidecarNaming(str, Enum):
    auto = "auto"
    full = "full"
    stem = "stem"


class Split(str, Enum):
    test = "test"
    val = "val"
    train = "train"
    all = "all"


BackboneOpt = Annotated[str, typer.Option(help="image backbone (tagger backbones lists them)")]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="backbone weights file, for backbones whose weights must be downloaded")]
BatchOpt = Annotated[int, typer.Option(min=1, help="photos per batch of the image backbone")]
# One meaning on every command: the cache root, features in its features/ (so train and evaluate with one --cache-dir share them).
CacheDirOpt = Annotated[Optional[Path], typer.Option(help="cache folder: features in its features/, word vectors, checkpoints (default: $TAGGER_CACHE or ~/.cache/tagger)")]
RuntimeOpt = Annotated[Optional[Runtime], typer.Option(help="what runs the image backbone: torch, onnx (ONNX Runtime, CPU only, same tags) or onnx-int8 (default: onnx on a CPU where onnxruntime is installed, else torch)")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", "-k", min=1, help="tags per photo (default: the model's, 10)")]
MinScoreOpt = Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="leave out tags scoring below this")]
ExcludeOpt = Annotated[Optional[list[str]], typer.Option("--exclude", "-x", help="a tag never to output (repeatable)")]
SeedOpt = Annotated[Optional[int], typer.Option(help="noise seed: the same seed gives the same tags")]
KindsOpt = Annotated[Optional[str], typer.Option(help="kinds of words to show, comma-separated: content, style, place, self, gear, community, date, other, or all (default: content,style: what is in the photo and how it was taken, and the places of its GPS, shown with place or all too)")]
EngineOpt = Annotated[Engine, typer.Option(help="where the work runs: local (this process) or ray (Ray Data: this machine's CPUs, or a cluster with --address; needs the ray extra)")]
AddressOpt = Annotated[Optional[str], typer.Option(help="with --engine ray: the Ray cluster to join (auto, or HEAD_IP:6379), from one of its nodes; default: start Ray on this machine")]
WorkersOpt = Annotated[Optional[int], typer.Option(min=1, help="with --engine ray: model replicas (Ray actors, one CPU or GPU each); default: one per CPU, or per GPU")]
EmbedOpt = Annotated[bool, typer.Option("--embed", help="also write the tags into each photo's own XMP, and its IPTC Keywords where it has IPTC, with exiftool (for Lightroom, which ignores sidecars of JPEGs)")]
BackupOpt = Annotated[Optional[Path], typer.Option("--backup", metavar="DIR", help="with --embed: keep each photo's original in DIR (outside the library; its path below the folders given), once: later runs keep the first")]
NoBackupOpt = Annotated[bool, typer.Option("--no-backup", help="with --embed: keep no original (the default; the photo is rewritten in place, atomically)")]
MethodOpt = Annotated[Optional[str], typer.Option(help="tagging method: the model's generator (its family: cgan, cvae or caae), knn (neighbour voting baseline), GENERATOR+knn (both combined) or prior (tag frequency); default: the model's choice")]


class UserError(TaggerError):
    """A bad option, found by the command line itself."""


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks of errors")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log more")] = False,
):
    state["debug"] = debug
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # records of loggers a command turns up (see progress_log) still stop here


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever sys.stdout is when a line is logged: one bound to the stdout of its first
    command would write a later command's progress (a test's CliRunner, an embedding program) to a closed stream."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _):
        pass


def progress_log(*names: str) -> None:
    """Show these loggers' INFO lines (a run's progress: epochs, stages) on stdout, as plain lines."""
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: record.levelno == logging.INFO)  # warnings go where every warning goes
    for name in names:
        logger = logging.getLogger(name)
        logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
        if not any(getattr(h, "progress", False) for h in logger.handlers):
            handler.progress = True
            logger.addHandler(handler)


def fail(message: str, code: int = 1):
    typer.echo(f"tagger: error: {message}", err=True)
    raise typer.Exit(code)


def command(fn):
    """A command: an error the user caused (a TaggerError) is one line and exit code 1, Ctrl-C exit code 130.

    Anything else is a bug and shows its traceback; --debug shows the traceback of user errors too.
    """

    @functools.wraps(fn)  # Typer reads the options from the wrapped function's signature
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except TaggerError as e:
            if state["debug"]:
                raise
            fail(str(e))

    return wrapper


def load_tagger(model: Path | None, device: str | None, runtime: Runtime | None = None):
    from tagger.bundle import load
    from tagger.shipped import resolve_model

    return load(resolve_model(model), device=device, runtime=_value(runtime))


def _value(choice: Enum | None) -> str | None:
    """An Enum option's text (what the library takes), or None."""
    return None if choice is None else choice.value


def ray_options(engine: Engine, address: str | None, workers: int | None, device: str | None, batch_size: int,
                runtime: "Runtime | None" = None):
    """The Ray engine's options for --engine ray, None for --engine local; a clear error for anything else."""
    if engine == Engine.local:
        if address or workers:
            raise UserError("--address and --workers go with --engine ray")
        return None
    from tagger.library.ray_engine import RayOptions, import_ray

    import_ray()  # without Ray, say how to install it before any work starts
    # Ray Data's progress bars on: a run over an archive lasts hours (they draw only on a terminal).
    return RayOptions(address=address, workers=workers, device=device, batch_size=batch_size, runtime=_value(runtime), progress=True)


def tag_on_ray(source: str, out: str, model: Path | None, options, sidecar: str | None, tag_options, **plan_options):
    """`tagger tag --engine ray`: the same rows as the local engine, in a Parquet dataset (tagger.library.ray_engine)."""
    from tagger.library.bundle_check import checked_settings
    from tagger.library.ray_engine import is_uri, tag_source
    from tagger.shipped import resolve_model

    if sidecar:
        raise UserError("--sidecar is not supported with --engine ray (workers may not see the photos' folders)")
    path = resolve_model(model)
    # A broken bundle or an unknown method fails here, in one line, before Ray starts; checked in a child
    # process, so that this one, which plans and collects the rows, never holds torch and the model.
    settings = checked_settings(path, tag_options)

    def plan(p):
        typer.echo(f"{source}: {p.photos} photos, {p.photos - p.todo} already tagged, {p.todo} to tag", err=True)

    if options.address and not is_uri(source):
        typer.echo("tagger: note: on a cluster, the photos must be where every node reaches them "
                   "(object storage, or a file system mounted on every node at the same path); --out is written by this machine",
                   err=True)
    summary = tag_source(source, out, path, options, tag_options=tag_options, on_plan=plan, settings=settings, **plan_options)
    report(summary, out)


def report(summary, out: Path, sidecars: str = "") -> None:
    """What a `tag` run did, the same lines for both engines; exit code 1 when a photo or sidecar failed in this run."""
    for reason, n in summary.skipped.most_common():
        typer.echo(f"tagger: skipped {n}: {reason} (e.g. {summary.examples[reason]})", err=True)
    for line in summary.failures:
        typer.echo(f"tagger: failed: {line}", err=True)  # printable already: paths as the results hold them
    for line in summary.sidecar_errors:
        typer.echo(f"tagger: sidecar failed: {line}", err=True)
    if summary.missing:
        shown = ", ".join(summary.missing[:5]) + (f" and {len(summary.missing) - 5} more" if len(summary.missing) > 5 else "")
        typer.echo(f"tagger: error: {len(summary.missing)} photos planned got no row in {out}: {shown}; run again to tag them", err=True)
    listed = f" (listed in {summary.failures_file})" if summary.failures_file else ""
    untagged = f"; {summary.untagged} blank frames given no tags (the note column says why)" if summary.untagged else ""
    typer.echo(f"{out}: {summary.tagged} tagged, {summary.kept} unchanged (kept), {summary.failed} failed{listed}{sidecars}{untagged}")
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
@command
def train(
    data: Annotated[Path, typer.Argument(help="photos with tags: a MIRFLICKR folder, the shared subset, or a CSV/Parquet manifest")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where the model bundle goes")],
    generator: Annotated[str, typer.Option(help="generator family: cgan (Mirza & Osindero), cvae (conditional VAE) or caae (conditional adversarial autoencoder)")] = "cgan",
    preset: Annotated[Optional[str], typer.Option(help="the generator's training preset (default: cgan votes, cvae votes, caae default; the paper's recipe: --preset paper; cgan: paper, adam or votes; cvae: default or votes)")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="epochs (default: the preset's)")] = None,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="stop after this many generator updates")] = None,
    backbone: BackboneOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    min_count: Annotated[int, typer.Option(min=1, help="least number of training photos a tag needs to enter the vocabulary")] = 10,
    precision: Annotated[float, typer.Option(min=0.05, max=1.0, help="the default threshold shows tags right this share of the time "
                                                                     "on concept-labelled validation photos")] = 0.8,
    split: Annotated[str, typer.Option(help="train,val,test shares of the photos, split by photo id")] = "0.8,0.1,0.1",
    half: Annotated[bool, typer.Option("--half", help="store the generator, the word layer and a retrained backbone tail in float16 (half the size)")] = False,
    tune_blocks: Annotated[int, typer.Option(min=0, help="retrain the backbone's last N blocks and a word layer on the training photos' tags "
                                                        "first (EfficientNet-Lite; 0: keep the backbone as it is)")] = 0,
    tune_epochs: Annotated[Optional[int], typer.Option(min=1, help="with --tune-blocks: at most this many epochs (default 6)")] = None,
    seed: Annotated[int, typer.Option(help="seed of word2vec, the generator and sampling")] = 0,
    batch_size: BatchOpt = 64,
    corpus: Annotated[Optional[Path], typer.Option(help="more tag lists for word2vec, of photos not in DATA (a .tsv/.csv with id and tags columns, e.g. the subset's tags_corpus.tsv)")] = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
    cache_dir: CacheDirOpt = None,
    engine: EngineOpt = Engine.local,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    from_model: Annotated[Optional[str], typer.Option("--from", metavar="MODEL", help="grow this bundle on the library instead of training one from nothing: its words, generator and kNN memory, with the library's words and photos added and the generator fine-tuned on the keywords (rejected tags as negatives); MODEL is a bundle folder, `shipped` (the model shipped with tagger), or `auto` (the shipped model when DATA has fewer than 2,000 tagged photos, else none)")] = None,
):
    """Train a model bundle: image features, word2vec, tag index, kNN, the generator and its calibration, in one command.

    Every stage reuses its cache, and an interrupted run resumes from its last finished epoch.

    Example:  tagger train ../shared/datasets/mirflickr25k_subset --out models/mirflickr
    """

    from tagger.training.fit import FitConfig, default_cache_dir, fit
    from tagger.training.tune import TuneConfig

    progress_log("tagger.training.fit", "tagger.training.loop", "tagger.training.extend")
    try:
        fractions = tuple(float(x) for x in split.split(","))
    except ValueError:
        raise UserError(f"--split must be three numbers like 0.8,0.1,0.1, not {split!r}") from None
    if len(fractions) != 3:
        raise UserError(f"--split must be three numbers like 0.8,0.1,0.1, not {split!r}")
    base = choose_base(from_model, data)
    if base is not None:
        given = [name for name, value in (("--generator", generator != "cgan"), ("--preset", preset), ("--max-steps", max_steps),
                                          ("--backbone", backbone != "efficientnet_lite0"), ("--weights", weights), ("--corpus", corpus),
                                          ("--engine", engine != Engine.local)) if value]
        if given:
            raise UserError(f"{', '.join(given)}: not with --from, which keeps its model's generator, word space and backbone")
        return train_from(data, out, base, min_count=min_count, split=fractions, seed=seed, epochs=epochs, half=half,
                          batch_size=batch_size, device=device, runtime=_value(runtime), cache_dir=cache_dir or default_cache_dir())
    config = FitConfig(
        generator=generator,
        preset=preset,
        split=fractions,
        half=half,
        backbone=backbone,
        weights=str(weights) if weights else None,
        min_count=min_count,
        precision=precision,
        epochs=epochs,
        max_steps=max_steps,
        seed=seed,
        feature_batch_size=batch_size,
        corpus=corpus,
        device=device,
        runtime=_value(runtime),
        cache_dir=cache_dir or default_cache_dir(),
        ray=ray_options(engine, address, workers, device, batch_size, runtime),
        tune=TuneConfig(blocks=tune_blocks, **({"epochs": tune_epochs} if tune_epochs else {})) if tune_blocks else None,
    )
    _, summary = fit(data, out, config)
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in summary.stage_seconds.items())
    typer.echo(f"model bundle: {out}")
    if summary.tune:
        typer.echo(f"retrained the backbone's last {summary.tune['blocks']} blocks: epoch {summary.tune['best_epoch']} kept "
                   f"(held-out training photos' P@5 {', '.join(f'{p:.4f}' for _, p in summary.tune['held_p5'])})")
    if not math.isnan(summary.val_p5):  # nan when there were no validation photos
        typer.echo(f"validation P@5: {summary.val_p5:.4f} (best epoch {summary.best_epoch} of {summary.epochs})")
    if summary.method:
        scores = ", ".join(f"{m} {p:.4f}" for m, p in summary.method_val_p5.items())
        typer.echo(f"default method: {summary.method} (validation P@5 {scores})")
    if summary.accepted_photos:
        typer.echo(f"shown by default: tags a person agrees with at probability >= {summary.threshold:.2f} (on {summary.accepted_photos:,} "
                   f"concept-labelled validation photos, {summary.threshold_precision:.0%} right, {summary.threshold_tags:.2f} tags a photo)")
    typer.echo(f"stages: {stages}")
    for warning in summary.warnings:
        typer.echo(f"tagger: WARNING: {warning}", err=True)


def choose_base(from_model: str | None, data: Path) -> Path | None:
    """The bundle `--from` names: a folder, `shipped`, or `auto` (the shipped model for a library of fewer than
    AUTO_FROM_PHOTOS tagged photos, else None: trained from nothing), said in one line."""
    if from_model is None:
        return None
    from tagger.shipped import SHIPPED, default_model_path

    if from_model in ("shipped", "auto"):
        if default_model_path() is None:
            raise UserError(f"--from {from_model}: this tagger has no shipped model ({SHIPPED})")
        if from_model == "shipped":
            return SHIPPED
        from pipelines.datasets import count_untagged, read_dataset
        from tagger.training.extend import AUTO_FROM_PHOTOS

        frame = read_dataset(data)
        tagged = len(frame) - count_untagged(frame)
        if tagged >= AUTO_FROM_PHOTOS:
            typer.echo(f"--from auto: {data} has {tagged:,} tagged photos ({AUTO_FROM_PHOTOS:,} or more): trained on its own")
            return None
        typer.echo(f"--from auto: {data} has {tagged:,} tagged photos (fewer than {AUTO_FROM_PHOTOS:,}): grown from the shipped model")
        return SHIPPED
    path = Path(from_model)
    if not path.exists():
        raise UserError(f"--from {from_model}: no such model folder (a bundle folder, shipped or auto)")
    return path


def train_from(data: Path, out: Path, base_path: Path, **options) -> None:
    """`train --from`: grow the bundle at `base_path` on `data` (tagger.training.extend), then both on the held-out photos."""
    from tagger.bundle import load
    from tagger.training.extend import ExtendConfig, extend

    if Path(out).resolve() == Path(base_path).resolve():
        raise UserError(f"--out {out}: is the --from model; write the new bundle elsewhere")
    epochs = options.pop("epochs")
    options["feature_batch_size"] = options.pop("batch_size")
    config = ExtendConfig(**options, **({"epochs": epochs} if epochs is not None else {}))
    base = load(base_path, device=config.device, runtime=config.runtime)
    name = "the shipped model" if base_path.resolve() == (Path(__file__).parent / "assets" / "model").resolve() else str(base_path)
    result = extend(data, out, base, config, base_name=name)
    s, c = result.summary, result.comparison
    shown = ", ".join(result.new_words[:10]) + (f" and {len(result.new_words) - 10} more" if len(result.new_words) > 10 else "")
    typer.echo(f"model bundle: {out} (from {name}: added {len(result.new_words)} of the library's words{': ' + shown if shown else ''}; "
               f"{len(result.tagger.knn.tags) - len(base.knn.tags)} photos added to the kNN memory; "
               f"{result.rejected} rejected tags learnt as negatives)")
    if not math.isnan(s.val_p5):
        typer.echo(f"validation P@5: {s.val_p5:.4f} (best epoch {s.best_epoch} of {s.epochs}; 0 is {name}'s generator)")
    if s.method_val_p5:
        typer.echo(f"default method: {s.method} (validation P@5 " + ", ".join(f"{m} {p:.4f}" for m, p in s.method_val_p5.items()) + ")")
    typer.echo("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in s.stage_seconds.items()))
    for warning in s.warnings:
        typer.echo(f"tagger: WARNING: {warning}", err=True)
    if not c.photos:
        typer.echo(f"held-out photos: none with a keyword of the model's words: not compared with {name}")
    else:
        typer.echo(f"held-out P@5 ({c.photos} {c.split} photos of {data}): new model {c.new_p5:.4f}, {name} {c.base_p5:.4f}")
    if c.worse:
        typer.echo(f"tagger: WARNING: the new model tags the library's held-out photos worse than {name} "
                   f"({c.new_p5:.4f} < {c.base_p5:.4f}): keep using {name} (recommended); {out} is kept to compare "
                   f"(tagger evaluate {data} --model {out} --model {base_path})", err=True)
    elif c.photos:
        typer.echo(f"recommended: {out} (held-out P@5 {c.new_p5:.4f} >= {c.base_p5:.4f})")


@app.command()
@command
def predict(
    # readable=False: click's own check would end the command (exit 2, a boxed usage error) at the first photo it
    # cannot read; the loader reports that photo in one line and tags the rest.
    images: Annotated[list[Path], typer.Argument(help="photo files", readable=False)],
    model: ModelOpt = None,
    top_k: TopKOpt = None,
    min_score: MinScoreOpt = None,
    exclude: ExcludeOpt = None,
    seed: SeedOpt = None,
    kinds: KindsOpt = None,
    method: MethodOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines: path, tags, scores, error, note (why a blank frame has no tags), and existing (the keywords the photo already carries from its owner)")] = False,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
):
    """Print tags with scores for each photo, best first.

    A photo that cannot be read is reported with the reason; the others are still tagged, and the
    exit code is 1. A blank frame (lens cap on, blown out, a blank scan) gets no tags and says why. A photo
    with GPS gets its city and country first, scored 1.00.

    Example:  tagger predict beach.jpg dog.png --top-k 5
    """

    from pipelines.images import printable_path
    from pipelines.keywords import owner_keywords
    from tagger.library.local import tag_paths
    from tagger.scoring.options import TagOptions

    tagger = load_tagger(model, device, runtime)
    opts = TagOptions(method=method, top_k=top_k, min_score=min_score, exclude=tuple(exclude or ()), seed=seed,
                      kinds=tuple(k.strip() for k in kinds.split(",")) if kinds else None)
    failed = 0
    # The batched path of `tag`, decoding in this process: a few photos do not pay for worker processes.
    for path, result in tag_paths(tagger, images, opts, num_workers=0):
        tags, error = result.tags or [], result.error
        failed += bool(error)
        if as_json:
            rec = {"path": printable_path(path), "tags": [t for t, _ in tags], "scores": [round(s, 4) for _, s in tags], "error": error,
                   "note": result.note, "existing": [] if error else owner_keywords(path)}
            typer.echo(json.dumps(rec, ensure_ascii=False))
        elif error:
            typer.echo(f"tagger: error: {printable_path(path)}: {error}", err=True)
        elif result.note:
            typer.echo(f"{printable_path(path)}: ({result.note})")
        else:
            typer.echo(f"{printable_path(path)}: " + ", ".join(f"{t} {s:.2f}" for t, s in tags))
    if failed:
        raise typer.Exit(1)


@app.command()
@command
def tag(
    # Text, not Path: a Path folds the "//" of s3://bucket/... (the ray engine takes URIs); local paths are made Paths below.
    sources: Annotated[list[str], typer.Argument(help="photo folders (searched recursively) and photo files; with --engine ray one folder, manifest or URI")],
    out: Annotated[str, typer.Option("--out", "-o", help="results file: .csv, .jsonl or .parquet (with --engine ray a Parquet folder, or a URI)")],
    model: ModelOpt = None,
    top_k: TopKOpt = None,
    min_score: MinScoreOpt = None,
    exclude: ExcludeOpt = None,
    seed: SeedOpt = None,
    kinds: KindsOpt = None,
    method: MethodOpt = None,
    sidecar: Annotated[Optional[SidecarKind], typer.Option(help="also keep a sidecar per photo: xmp (the owner's and the machine's keywords in dc:subject, lr:hierarchicalSubject and digiKam:TagsList, for digiKam, Lightroom, darktable, Immich) or txt (one tag a line)")] = None,
    sidecar_name: Annotated[SidecarNaming, typer.Option(help="XMP sidecar name: full (IMG_1.jpg.xmp), stem (IMG_1.xmp), or auto (stem where the library already has one, else full)")] = SidecarNaming.auto,
    keyword_root: Annotated[str, typer.Option(help="machine tags go under this root of the keyword tree (tagger|animal|cat), so re-tagging replaces only them")] = DEFAULT_ROOT,
    flat: Annotated[bool, typer.Option("--flat", help="with --sidecar xmp or --embed: write each keyword right under the root (tagger|cat), as earlier versions did, not under its category (tagger|animal|cat)")] = False,
    embed: EmbedOpt = False,
    backup: BackupOpt = None,
    no_backup: NoBackupOpt = False,
    exclude_dir: Annotated[Optional[list[str]], typer.Option("--exclude-dir", help="folder-name glob not to enter (repeatable), besides the defaults: " + ", ".join(DEFAULT_EXCLUDE_DIRS))] = None,
    skip_owner_tagged: Annotated[bool, typer.Option("--skip-owner-tagged", help="leave out photos that already carry their owner's keywords (embedded, IPTC or in a sidecar)")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed/--no-retry-failed", help="try photos that failed before again, even if unchanged (a photo read while being copied fails once)")] = True,
    rehash: Annotated[bool, typer.Option("--rehash", help="read and hash every photo already tagged, to find a change that kept the size and modification time (without it, a photo whose size and mtime match its row is not read)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be tagged and written, and change nothing")] = False,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
    cache_dir: CacheDirOpt = None,
    feature_cache: Annotated[bool, typer.Option("--feature-cache/--no-feature-cache", help="keep the photos' features in the cache, so tagging them again with other options or another model on the same backbone skips the image network")] = True,
    engine: EngineOpt = Engine.local,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
):
    """Tag every photo of SOURCES into one results file (one row per photo), and keep their sidecars in step.

    Run again, it keeps what is done and tags only new or changed photos, or all of them when the
    model or the options changed; an interrupted run resumes the same way. Every run makes each
    sidecar match the results: a missing one is written, a stale one updated, the owner's own
    keywords are never touched, and a tag the owner removed is never written again (`tagger untag`
    takes every machine tag out). Photos that cannot be read get a row with the error and are listed
    in OUT.failed.tsv; the exit code is 1 when a photo or a sidecar failed.

    Example:  tagger tag ~/Pictures/2024 --out tags.csv --sidecar xmp
    """

    from tqdm import tqdm

    from dataclasses import replace

    from tagger.library.batch import tag_folder
    from tagger.library.keyword_tree import KeywordTree
    from tagger.library.results import output_format
    from tagger.library.sidecar import SidecarConfig

    output_format(Path(out))
    try:
        side = SidecarConfig(sidecar.value, sidecar_name.value) if sidecar else None
        tree = KeywordTree(keyword_root, flat)
    except ValueError as e:
        raise UserError(str(e)) from None
    check_embed(embed, backup, no_backup)
    on_ray = ray_options(engine, address, workers, device, batch_size, runtime)
    from tagger.scoring.options import TagOptions

    opts = TagOptions(method=method, top_k=top_k, min_score=min_score, exclude=tuple(exclude or ()), seed=seed,
                      kinds=tuple(k.strip() for k in kinds.split(",")) if kinds else None)
    if on_ray:
        if len(sources) != 1 or embed or dry_run:
            raise UserError("--engine ray takes one SOURCE (a folder, a manifest or a URI) and no --embed or --dry-run")
        return tag_on_ray(sources[0], out, model, on_ray, side, opts, exclude_dirs=DEFAULT_EXCLUDE_DIRS + tuple(exclude_dir or ()),
                          skip_owner_tagged=skip_owner_tagged, retry_failed=retry_failed, rehash=rehash)
    from tagger.library.local import tag_paths  # torch with it: not for the ray engine's driver

    sources, out = [Path(s) for s in sources], Path(out)
    tagger = load_tagger(model, device, runtime)
    tagger.method_of(opts)  # an unknown method is refused before the scan, and before any file is made
    # Each keyword under its category (the bundle's word kinds); a bundle without them files every keyword flat.
    tree = replace(tree, categories=tagger.kinds.keyword_categories() if tagger.kinds is not None else {})
    bar = tqdm(unit="photo", desc="tagging", disable=None if not dry_run else True)

    def plan(p):
        retag = f" ({p.retag} tagged with another model or options)" if p.retag else ""
        where = str(sources[0]) if len(sources) == 1 else f"{len(sources)} files and folders"
        typer.echo(f"{where}: {p.photos} photos, {p.photos - p.todo} already tagged, "
                   f"{p.todo} to tag{retag}; {p.skipped} other files skipped", err=True)
        bar.reset(total=p.todo)

    from pipelines.cache import default_cache_dir

    features_dir = (cache_dir or default_cache_dir()) / "features" if feature_cache else None
    summary = tag_folder(sources, out, lambda paths: tag_paths(tagger, paths, opts, batch_size=batch_size, cache_dir=features_dir),
                         settings=tagger.settings(opts), sidecar=side, embed=embed, backup=backup, tree=tree,
                         exclude_dirs=DEFAULT_EXCLUDE_DIRS + tuple(exclude_dir or ()), skip_owner_tagged=skip_owner_tagged,
                         retry_failed=retry_failed, rehash=rehash, dry_run=dry_run, progress=bar.update, on_plan=plan)
    bar.close()
    if dry_run:
        for reason, n in summary.skipped.most_common():
            typer.echo(f"tagger: skipped {n}: {reason} (e.g. {summary.examples[reason]})", err=True)
        for path in summary.to_tag[:20]:
            typer.echo(f"would tag: {path}")
        more = f" (first 20 listed)" if len(summary.to_tag) > 20 else ""
        sidecars = f", write {summary.sidecars_written} sidecars" if side else ""
        sidecars += f", write keywords into {summary.embedded} photos" if embed else ""
        typer.echo(f"dry run: would tag {len(summary.to_tag)} photos{more}{sidecars}; nothing was changed")
        return
    sidecars = f"; sidecars: {summary.sidecars_written} written, {len(summary.sidecar_errors)} failed" if side else ""
    sidecars += f"; keywords written into {summary.embedded} photos" if embed else ""
    report(summary, out, sidecars)


@app.command()
@command
def compact(
    out: Annotated[str, typer.Argument(help="the Parquet folder `tagger tag --engine ray` wrote (or its URI)")],
    rows_per_file: Annotated[int, typer.Option(min=1, help="rows of each merged file")] = 100_000,
):
    """Merge the files of a finished `--engine ray` output into few large ones (the latest row of each photo, by path).

    Example:  tagger compact tags.parquet
    """
    from tagger.library.ray_engine import compact as merge

    before, after, rows = merge(out, rows_per_file)
    typer.echo(f"{out}: {rows} rows, {before} files merged into {after}")


@app.command()
@command
def untag(
    sources: Annotated[list[Path], typer.Argument(help="photo folders (searched recursively) and photo files, as given to `tagger tag`")],
    embed: Annotated[bool, typer.Option("--embed", help="also take tagger's keywords out of the photos' own XMP and IPTC (what `tag --embed` wrote), with exiftool")] = False,
    backup: BackupOpt = None,
    no_backup: NoBackupOpt = False,
    keyword_root: Annotated[str, typer.Option(help="the root tagger's keywords were written under (tag's --keyword-root)")] = DEFAULT_ROOT,
    exclude_dir: Annotated[Optional[list[str]], typer.Option("--exclude-dir", help="folder-name glob not to enter (repeatable), besides the defaults: " + ", ".join(DEFAULT_EXCLUDE_DIRS))] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be changed or deleted, and change nothing")] = False,
):
    """Take every machine tag tagger wrote out of the sidecars (and, with --embed, the photos) of SOURCES again.

    The owner's keywords, ratings, labels, face regions, edits and every other field stay as they were;
    a sidecar tagger created that then holds nothing else is deleted. Files with nothing of tagger's
    in them are not touched. The exit code is 1 when a file could not be read or written.

    Example:  tagger untag ~/Pictures/2024 --dry-run
    """
    from tagger.library.batch import backup_path, check_backup
    from tagger.library.keyword_tree import KeywordTree
    from tagger.library.untag import untag as run_untag

    try:
        tree = KeywordTree(keyword_root)
    except ValueError as e:
        raise UserError(str(e)) from None
    check_embed(embed, backup, no_backup, need_exiftool=not dry_run)
    for source in sources:
        if not source.exists():
            raise UserError(f"{source}: no such file or folder")
    if backup is not None:
        check_backup(backup, sources)
    summary = run_untag(sources, embed=embed, tree=tree, exclude_dirs=DEFAULT_EXCLUDE_DIRS + tuple(exclude_dir or ()),
                        backups=backup_path(backup, sources), dry_run=dry_run)
    for line in summary.done:
        typer.echo(line)
    for line in summary.errors:
        typer.echo(f"tagger: failed: {line}", err=True)
    photos = f", {summary.embedded} photos rewritten" if embed else ""
    typer.echo(f"{'dry run: ' if dry_run else ''}{summary.photos} photos: {'would take' if dry_run else 'took'} out "
               f"{summary.keywords} machine keywords: {summary.sidecars} sidecars rewritten, {summary.deleted} deleted "
               f"(made by tagger, nothing else in them){photos}; {len(summary.errors)} failed" + ("; nothing was changed" if dry_run else ""))
    if summary.errors:
        raise typer.Exit(1)


def check_embed(embed: bool, backup: Path | None, no_backup: bool, need_exiftool: bool = True) -> None:
    """--embed needs exiftool; --backup and --no-backup go with it, and not together."""
    if backup is not None and no_backup:
        raise UserError("--backup DIR and --no-backup contradict each other; give one")
    if backup is not None and not embed:
        raise UserError("--backup keeps the originals of photos --embed rewrites; without --embed no photo is rewritten")
    if embed and need_exiftool and shutil.which("exiftool") is None:
        raise UserError("--embed writes keywords into photos with exiftool, which is not installed "
                        "(Debian/Ubuntu: apt install libimage-exiftool-perl; macOS: brew install exiftool)")


@app.command()
@command
def evaluate(
    data: Annotated[Path, typer.Argument(help="the dataset the models were trained on (their split settings are in the bundles)")],
    model: Annotated[Optional[list[Path]], typer.Option("--model", "-m", help="model bundle folder (repeatable: bundles side by side; default: $TAGGER_MODEL, else the shipped model)")] = None,
    split: Annotated[Split, typer.Option(help="the photos to evaluate on")] = Split.test,
    method: Annotated[Optional[list[str]], typer.Option(help="methods to compare (repeatable; default: all each model has)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder for report.json and report.html")] = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
    cache_dir: CacheDirOpt = None,
):
    """Compare tagging methods and bundles on held-out photos: P@k, R@k, F1@k, MiAP, MAP, N+, coverage, ECE.

    Against the photos' normalized in-vocabulary user tags, and against the 24 concept labels
    where the data has them; each method's P@5 against its bundle's kNN, photo by photo. With
    several --model, one row per bundle and method, named BUNDLE/METHOD. Writes report.json and
    report.html (sample photos, P@k plot, reliability diagram, training curves) with --out.

    Example:  tagger evaluate ../shared/datasets/mirflickr25k_subset --model models/cgan --model models/cvae --out reports/
    """

    import time

    from tagger.evaluation.evaluate import evaluate as run_evaluation
    from tagger.evaluation.evaluate import format_audit, format_shown, format_table, format_versus_knn
    from pipelines.cache import default_cache_dir

    paths = model or [None]
    names = [p.name if p is not None else "model" for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    taggers = {n: load_tagger(p, device, runtime) for n, p in zip(names, paths)}
    start = time.perf_counter()
    ev = run_evaluation(taggers if len(taggers) > 1 else next(iter(taggers.values())), data, split.value,
                        tuple(method) if method else None,
                        cache_dir=(cache_dir or default_cache_dir()) / "features", batch_size=batch_size)
    typer.echo(f"{data} [{split.value}]: {ev.photos} photos, {ev.left_out} without an in-vocabulary user tag (left out)")
    typer.echo("\nuser tags:\n" + format_table(ev, "tags"))
    if ev.labels:
        typer.echo("\nconcept labels:\n" + format_table(ev, "labels"))
    if ev.versus_knn:
        typer.echo("\nP@5 minus kNN's, photo by photo (user tags):\n" + format_versus_knn(ev))
        typer.echo("\nthe same against the owners' tags of the kinds shown:\n" + format_versus_knn(ev, "versus_knn_shown"))
    typer.echo("\nwhat each method shows by default (its top_k and min_score), and of which kinds of words:\n" + format_shown(ev))
    if ev.visualness:
        ranked = list(ev.visualness.items())
        line = lambda part: ", ".join(f"{w} {v['lift']:.1f}x" for w, v in part)  # noqa: E731
        typer.echo(f"\nvisualness (AP over prior, {len(ranked)} words on 5+ photos): most {line(ranked[:10])}; least {line(ranked[-10:])}")
    typer.echo("\nphotos given a place name, me/self, or blackandwhite on a colour photo in their top 5:\n" + format_audit(ev))
    typer.echo("\nseconds per method: " + ", ".join(f"{m} {s:.1f}" for m, s in ev.seconds.items())
               + f" (total with features {time.perf_counter() - start:.0f} s)")
    if out:
        from tagger.evaluation.report import write_html

        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(ev.to_dict(), indent=2, ensure_ascii=False))
        write_html(ev, out / "report.html", models=[p for p in paths if p is not None])
        typer.echo(f"report: {out / 'report.html'}")


@app.command()
@command
def features(
    data: Annotated[Path, typer.Argument(help="a dataset (as for train) or a folder of photos")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for features.npy and photos.csv")],
    backbone: BackboneOpt = "efficientnet_lite0",
    weights: WeightsOpt = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
    cache_dir: CacheDirOpt = None,
    engine: EngineOpt = Engine.local,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
):
    """Extract image features to OUT/features.npy (float32, one row per photo of OUT/photos.csv).

    `tagger train` runs this step itself and shares its cache; use it alone to inspect features or
    to warm the cache.

    Example:  tagger features ../shared/datasets/mirflickr25k_subset --out /tmp/feats
    """

    import numpy as np

    from pipelines.datasets import DatasetError, read_dataset, read_folder
    from pipelines.cache import default_cache_dir
    from pipelines.features import FeatureConfig, extract_features

    try:
        frame = read_dataset(data)
    except DatasetError:
        if not data.is_dir():
            raise
        frame = read_folder(data)  # photos without keywords have features too
    config = FeatureConfig(backbone=backbone, weights=str(weights) if weights else None, batch_size=batch_size,
                           device=device, runtime=_value(runtime), cache_dir=(cache_dir or default_cache_dir()) / "features")
    on_ray = ray_options(engine, address, workers, device, batch_size, runtime)
    if on_ray:
        from tagger.library.ray_engine import warm_feature_cache

        # Ray fills the cache; the local pass below then reads every photo from it and writes the same files.
        warm_feature_cache(list(frame["path"]), config, on_ray)
    result = extract_features(list(frame["path"]), config)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "features.npy", result.features)
    frame.assign(ok=result.ok)[["id", "path", "ok"]].to_csv(out / "photos.csv", index=False)
    for err in result.errors.values():
        typer.echo(f"tagger: failed: {err}", err=True)
    typer.echo(f"{out / 'features.npy'}: {result.features.shape[0]} x {result.features.shape[1]} ({len(result.errors)} failed)")


@app.command()
@command
def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="address to listen on; 0.0.0.0 opens the service to the network (set a --token then)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8000,
    token: Annotated[Optional[str], typer.Option(help="API token every /v1 request must send as 'Authorization: Bearer TOKEN' (default: $TAGGER_TOKEN)")] = None,
    max_photos: Annotated[int, typer.Option(min=1, help="most photos in one request")] = 32,
    max_photo_mb: Annotated[float, typer.Option(min=0.001, help="largest photo upload, in MB")] = 20.0,
    library: Annotated[Optional[Path], typer.Option(help="a photo folder `tagger tag --sidecar xmp` tagged: review its tags at /review (accept or reject; written into the sidecars)")] = None,
    keyword_root: Annotated[str, typer.Option(help="with --library: the root tag's --keyword-root wrote machine tags under")] = DEFAULT_ROOT,
    exclude_dir: Annotated[Optional[list[str]], typer.Option("--exclude-dir", help="with --library: folder-name glob not to enter (repeatable), besides the defaults: " + ", ".join(DEFAULT_EXCLUDE_DIRS))] = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
):
    """Serve tagging over HTTP: POST /v1/tag, a web page at /, the API docs at /docs; with --library, a review page at /review.

    The model loads once at start; requests that arrive together share one forward pass.

    Example:  tagger serve --model models/mirflickr --port 8000
    Example:  tagger serve --library ~/Pictures

    With --library, open http://127.0.0.1:8000/review to accept or reject the machine's tags.
    """

    from tagger.service.app import ServiceLimits, resolve_token
    from tagger.service.app import serve as serve_http

    token = resolve_token(token)  # before the model loads: an empty token is refused at once
    limits = ServiceLimits(max_photos=max_photos, max_photo_bytes=int(max_photo_mb * 1024 * 1024))
    review = None
    if library is not None:
        from tagger.library.review import Library, ReviewConfig

        try:
            review = Library(library, ReviewConfig(keyword_root, DEFAULT_EXCLUDE_DIRS + tuple(exclude_dir or ())))
        except ValueError as e:
            raise UserError(str(e)) from None
        typer.echo(f"tagger: reviewing {len(review)} photos of {library} at http://{host}:{port}/review", err=True)
    tagger = load_tagger(model, device, runtime)
    typer.echo(f"tagger: serving {tagger.backbone_name} ({tagger.backbone.runtime}, {len(tagger.words)} tags) on http://{host}:{port}/  (API docs: /docs)", err=True)
    serve_http(tagger, host=host, port=port, token=token, limits=limits, library=review)


@app.command("export-onnx")
@command
def export_onnx(
    out: Annotated[Path, typer.Argument(help="the ONNX file to write (e.g. backbone.onnx)")],
    model: ModelOpt = None,
):
    """Write the model's image backbone as an ONNX file, for running it elsewhere (its inputs and outputs are in its metadata).

    The file takes float32 pixels (N, 3, 224, 224), RGB 0..255 after resizing the shorter side to 256
    (bicubic) and a centre crop of 224 (for the default backbone), and gives the features (N, 1280) the
    model tags from; it was checked against torch when exported.

    Example:  tagger export-onnx backbone.onnx
    """

    import onnx

    from embeddings.files import atomic_write
    from pipelines.backbones import create_backbone

    tagger = load_tagger(model, "cpu")
    backbone = create_backbone(tagger.backbone_name, weights=tagger.backbone_weights, device="cpu", runtime="onnx")
    atomic_write(out, backbone.path.read_bytes())  # the cached file, already checked against torch
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    typer.echo(f"{out}: {tagger.backbone_name} (largest difference from torch {meta['tagger.max_abs_diff_vs_torch']})")
    for key in ("input", "output", "preprocessing_steps"):
        typer.echo(f"  {key.replace('_steps', '')}: {meta['tagger.' + key]}")


@app.command()
@command
def backbones():
    """List the image backbones and their feature sizes.

    Example:  tagger backbones
    """
    from pipelines.backbones import get_spec, list_backbones

    for name in list_backbones():
        spec = get_spec(name)
        typer.echo(f"{name:22s} {spec.dim:5d}-d  {spec.weights}")


if __name__ == "__main__":
    app()
