"""What a user reads names files as the user named them: never a server path (which also holds the session's
folder), whatever produced the message (the engine, SimpleITK, the operating system).

Known paths become the names the user gave (an upload's file name, a zip's name for its unpacked folder, a path
relative to the data root); any other absolute path that is left becomes its last component.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Union

# An absolute POSIX path of two or more components; not the tail of a URL (``http://host/x``) or of 'a/b'.
ABSOLUTE_PATH = re.compile(r"(?<![\w./:~-])/(?:[^\s'\"/:;,()]+/)+([^\s'\"/:;,()]+)")


def for_user(text: str, known: Mapping[Union[str, os.PathLike], str]) -> str:
    """``text`` with each known path replaced by what the user calls it (longest first), then any other path
    by its last component."""
    for path, shown in sorted(((str(p), s) for p, s in known.items()), key=lambda item: -len(item[0])):
        text = text.replace(path, shown)
    return ABSOLUTE_PATH.sub(lambda match: match.group(1), text)
