"""Files a session may open on the server: everything below ``--data-root`` and nothing else.

The browser sends paths relative to the root. A path is refused when it is not text (or holds a NUL byte), is
absolute, holds ``..``, or resolves (through any symlink, at any depth) to a place outside the root: the check is
made on the real path the file would be opened from, so a link planted inside the root cannot reach ``/etc``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .inputs import is_dicom_file, is_image_name


class OutsideDataRootError(ValueError):
    """A requested path is not below the data root."""


@dataclass(frozen=True)
class Entry:
    """One row of a folder listing: ``path`` relative to the root, with '/' separators."""

    name: str
    path: str
    kind: str  # "folder", "dicom" (a folder of .dcm files) or "image" (a file the engine reads)


class DataRoot:
    def __init__(self, root: os.PathLike | str) -> None:
        self.root = Path(root).resolve(strict=True)
        if not self.root.is_dir():
            raise NotADirectoryError(f"--data-root {root} is not a folder.")

    def resolve(self, relative: str) -> Path:
        """The real path of ``relative`` below the root; OutsideDataRootError for anything that leaves it, and for
        what is no path at all (the browser may send anything: a NUL byte, a number)."""
        if not isinstance(relative, str) or "\0" in relative:
            raise OutsideDataRootError("The page asked for something that is not a valid path in the data folder.")
        text = relative.replace("\\", "/")
        pure = PurePosixPath(text)
        if pure.is_absolute() or text.startswith("~") or ".." in pure.parts:
            raise OutsideDataRootError(f"'{relative}' is not a path inside the data folder.")
        real = (self.root / Path(*pure.parts)).resolve() if pure.parts else self.root
        if real != self.root and self.root not in real.parents:
            raise OutsideDataRootError(f"'{relative}' leads outside the data folder.")
        if not real.exists():
            raise FileNotFoundError(f"'{relative}' does not exist in the data folder.")
        return real

    def listing(self, relative: str = "") -> list[Entry]:
        """Sub-folders, DICOM folders and readable images of a folder, folders first, by name."""
        folder = self.resolve(relative)
        if not folder.is_dir():
            raise NotADirectoryError(f"'{relative}' is not a folder.")
        entries = []
        for child in sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower())):
            if child.name.startswith("."):
                continue
            path = "/".join(filter(None, [relative.strip("/"), child.name]))
            try:
                self.resolve(path)
            except (OutsideDataRootError, FileNotFoundError):
                continue  # a link that leaves the root, or a broken one: not shown
            kind = _kind(child)
            if kind:
                entries.append(Entry(child.name, path, kind))
        return entries


DICOM_PROBE_FILES = 8


def _kind(path: Path) -> str:
    if path.is_dir():
        files = [p for p in sorted(path.iterdir())[:DICOM_PROBE_FILES] if p.is_file()]
        return "dicom" if any(is_dicom_file(p) for p in files) else "folder"  # slices often have no suffix
    return "image" if is_image_name(path.name) else ""
