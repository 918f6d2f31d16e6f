"""Checks of what is read from files a stranger may have written (a model bundle is a stranger's folder).

    check_fields(config)             every field of a dataclass against its annotation (its __post_init__ calls it)
    check_values(values, types)      the named values of a dict, each against its type
    read_json(path, max_bytes)       a JSON file of bounded size and depth
    npz_headers(path)                the shape and dtype of every array of an .npz, from the .npy headers alone
    expect(headers, name, ...)       one of them, of the kind and number of dimensions wanted

Types are checked by pydantic in strict mode: "no" is not a bool, True is not an int, a list is not a
tuple, 3 is not an Optional[str]; an int is a float. Every failure is a ValueError (or the error class
given) whose message names the field or array and the value found, in one line.
"""
from __future__ import annotations

import functools
import os
import typing
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np

KINDS = {"f": "floats", "iu": "integers", "U": "text"}


def check_type(value, tp, name: str, error: type[Exception] = ValueError) -> None:
    """`value` is of type `tp` as declared, or `error` saying `name must be ..., got ...`."""
    from pydantic import ValidationError

    try:
        _adapter(tp).validate_python(value, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        where = name + "".join(f"[{p}]" if isinstance(p, int) else f"[{p!r}]" for p in first["loc"] if p != "[key]")
        what = first["msg"].removeprefix("Input should be ")
        if first["type"] == "missing":
            raise error(f"{where} is missing") from None
        if first["type"] == "greater_than_equal":
            what = f"{first['ctx']['ge']} or more"
        elif first["type"] == "greater_than":
            what = f"above {first['ctx']['gt']}"
        if not first["loc"] and type(None) in typing.get_args(tp):
            what += " or None"  # pydantic names only the other choice
        raise error(f"{where} must be {what}, got {short(first['input'])}") from None


def check_values(values: dict, types: dict, prefix: str = "", error: type[Exception] = ValueError) -> None:
    """Each value of `values` named in `types` against its type (`a.b` reaches into the dict at `a`); absent or
    other keys are left alone. Earlier names are checked first, so a parent is a dict before its keys are read."""
    for name, tp in types.items():
        parent, *path, key = [values, *name.split(".")]
        for part in path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and key in parent:
            check_type(parent[key], tp, prefix + name, error)


def check_fields(obj, error: type[Exception] = ValueError) -> None:
    """Every field of a dataclass instance against its declared type."""
    check_values({f.name: getattr(obj, f.name) for f in fields(obj)}, field_types(type(obj)), error=error)


@functools.cache
def field_types(cls) -> dict:
    """A dataclass's fields and their types, resolved (the annotations are text under `from __future__ import annotations`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


@functools.cache
def _adapter(tp):
    from pydantic import TypeAdapter  # imported on first use: only checks need it

    return TypeAdapter(tp)


def short(value, limit: int = 60) -> str:
    """repr of a value a stranger chose, cut so that a message stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_json(path: str | Path, max_bytes: int):
    """A JSON file of at most `max_bytes`, as Python values; a ValueError saying what is wrong otherwise."""
    import json

    with open(path, "rb") as f:
        # Never more than the file holds: read(n) sets aside n bytes before it reads.
        data = f.read(min(os.fstat(f.fileno()).st_size, max_bytes) + 1)
    if len(data) > max_bytes:
        raise ValueError(f"over the limit of {max_bytes >> 20} MB for this file")
    try:
        return json.loads(data)  # bytes: UTF-8 (or -16, -32), whatever the locale
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"not valid JSON ({e})") from None


def npz_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of every array of an .npz file, read from the .npy headers: nothing the size of an
    array is allocated, so the caller can check the shapes against each other and against its limits first.

    Refused: a compressed array (tagger writes .npz files uncompressed, so that no array takes more memory
    than it takes disk: a compressed one could unpack to any size), a header whose shape and dtype do not
    make the bytes stored, and arrays of Python objects.
    """
    size = os.path.getsize(path)
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise ValueError(f"array {name} is compressed (tagger writes its arrays uncompressed)")
            if info.header_offset + info.compress_size > size:
                raise ValueError(f"array {name} is cut short: the file ends before its data")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"array {name}: .npy format {version} is not read here")
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
                start = f.tell()
            if dtype.hasobject:
                raise ValueError(f"array {name} holds Python objects")
            if any(n < 0 for n in shape) or start + int(np.prod(shape, dtype=object)) * dtype.itemsize != info.file_size:
                raise ValueError(f"array {name}: its header says {shape} {dtype}, which is not the "
                                 f"{info.file_size - start} bytes stored")
            out[name] = (tuple(shape), dtype)
    return out


def expect(headers: dict, name: str, kinds: str, ndim: int) -> tuple[tuple[int, ...], np.dtype]:
    """The (shape, dtype) of array `name`, after checking it is there, of one of `kinds` (numpy's dtype kinds:
    "f" floats, "iu" integers, "U" text) and of `ndim` dimensions."""
    if name not in headers:
        raise ValueError(f"array {name} is missing")
    shape, dtype = headers[name]
    if dtype.kind not in kinds or len(shape) != ndim:
        raise ValueError(f"array {name} is {len(shape)}-d {dtype}, expected {ndim}-d {KINDS[kinds]}")
    return shape, dtype


def check_format(data, format: str, version: int) -> dict:
    """`data` when it is a dict naming this file format and version; a ValueError saying what it holds otherwise."""
    if not isinstance(data, dict) or data.get("format") != format or data.get("version") != version:
        found = f"{data.get('format')!r} v{data.get('version')!r}" if isinstance(data, dict) else short(data)
        raise ValueError(f"not a {format} v{version} file (found {found})")
    return data


def read_format(path: str | Path, format: str, version: int, max_bytes: int) -> dict:
    """A JSON file of this format and version (read_json, then check_format)."""
    return check_format(read_json(path, max_bytes), format, version)
