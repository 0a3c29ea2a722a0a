"""Byte-compile the copied scripts of a scripted module, as CTK's generated compile script does.

Reproduces CTK's ``CMake/ctk_compile_python_scripts.cmake.in`` (commit 868d56c7): each file is compiled to
``<file>c`` beside it; a file that does not compile is reported and the build goes on, and a stamp file marks
the step done. Usage: ``python compile_python_scripts.py <file list> <stamp>``.
"""

from __future__ import annotations

import py_compile
import sys
from pathlib import Path


def main(file_list: str, stamp: str) -> int:
    """Compile every listed file; always succeeds, like the step it stands in for."""
    for line in Path(file_list).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            py_compile.compile(line, cfile=line + "c", doraise=True)
        except (py_compile.PyCompileError, OSError) as err:
            print(f"Compiling {line} failed: {err}")
    Path(stamp).write_text("Done", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
