"""Atomic writing: a result appears complete under its final name or not at all, and an existing output is
replaced only when the caller says so."""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..errors import OutputExistsError
from .formats import split_suffix
from .read_errors import PathLike


def _temp_sibling(target: Path, directory: bool) -> Path:
    """A fresh hidden name next to ``target`` (same file system, so the final rename is atomic)."""
    stem, suffix = (target.name, "") if directory else split_suffix(target.name)
    return target.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{suffix}")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _refuse_existing(target: Path, overwrite: bool, directory: bool) -> None:
    """Raise unless writing ``target`` replaces nothing or replacing was allowed.

    An existing empty folder is not an overwrite for a directory output: nothing in it is lost.
    A kind mismatch (a folder where a file goes, or the reverse) is refused even with overwrite.
    """
    if not _exists(target):
        return
    if target.is_dir() != directory:
        kind = "a folder" if target.is_dir() else "a file"
        raise OutputExistsError(f"{target} exists and is {kind}; choose another output path.")
    if not overwrite and not (directory and not any(target.iterdir())):
        raise OutputExistsError(
            f"{target} already exists. Pass overwrite=True (--overwrite on the command line) to replace it."
        )


def check_output_path(path: PathLike, overwrite: bool = False, directory: Optional[bool] = None) -> None:
    """Refuse an occupied output before hours of computing rather than after.

    ``directory`` None judges an existing target by its own kind. :func:`atomic_output` checks
    again when writing, since the path may be taken in the meantime.
    """
    target = Path(path).expanduser()
    _refuse_existing(target, overwrite, target.is_dir() if directory is None else directory)


def _make_parents(folder: Path) -> list[Path]:
    """Create missing parent folders; return those created (deepest last) so a failure can remove them."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif _exists(path):
        path.unlink()


def _merge_into(source: Path, target: Path) -> None:
    """Move every entry of ``source`` into the existing folder ``target``, replacing same-named ones.

    Replacing a whole existing folder could delete files the caller never wrote (an output path
    pointing at a home folder), so a directory output only ever replaces the files it writes.
    """
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            _merge_into(entry, destination)
        else:
            os.replace(entry, destination)
    shutil.rmtree(source, ignore_errors=True)


def _move_into_place(temp: Path, target: Path) -> None:
    if temp.is_dir() and target.is_dir():
        _merge_into(temp, target)
    else:
        os.replace(temp, target)


@contextmanager
def atomic_output(path: PathLike, overwrite: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; move it into place only on success.

    The temporary keeps the target's suffix (``.nii.gz``, ``.seg.nrrd``) so writers choosing the
    format by name behave as for the target. For ``directory=True`` it is an existing empty folder
    that is renamed into place (merged file by file into an existing target folder). On any exception
    the temporary and any parent folders created for it are removed, so a failed write leaves
    nothing behind. An existing target raises :class:`OutputExistsError` unless ``overwrite``.
    """
    target = Path(path).expanduser()
    _refuse_existing(target, overwrite, directory)
    created = _make_parents(target.parent)
    temp = _temp_sibling(target, directory)
    try:
        if directory:
            temp.mkdir()
        yield temp
        _refuse_existing(target, overwrite, directory)
        _move_into_place(temp, target)
    except BaseException:
        _remove(temp)
        for folder in reversed(created):
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        raise

