"""The model bundle shipped inside the package, used when no --model is given."""
from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).parent / "assets" / "model"


def default_model_path() -> Path | None:
    return SHIPPED if (SHIPPED / "config.json").is_file() else None
