"""Which model bundle a command uses: the one given, else $TAGGER_MODEL, else the one shipped inside the package."""
from __future__ import annotations

import os
from pathlib import Path

from pipelines.errors import OptionError

SHIPPED = Path(__file__).parent / "assets" / "model"


def default_model_path() -> Path | None:
    return SHIPPED if (SHIPPED / "config.json").is_file() else None


def resolve_model(path: str | Path | None = None) -> Path:
    """The bundle folder to load: `path`, else $TAGGER_MODEL, else the shipped model (the CLI and the service alike)."""
    if path is None and os.environ.get("TAGGER_MODEL"):
        path = os.environ["TAGGER_MODEL"]
    path = Path(path) if path is not None else default_model_path()
    if path is None:
        raise OptionError("no model: pass --model DIR (a bundle made by `tagger train`) or set TAGGER_MODEL")
    if not path.exists():
        raise OptionError(f"{path}: no such model folder")
    return path
