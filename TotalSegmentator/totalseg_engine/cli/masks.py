"""``totalseg_combine_masks -i OUTPUT -o lung.nii.gz -m lung``: union masks of related classes, as the official."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib

from ..core.masks import GROUPS, combine_path
from ..errors import TotalSegmentatorError
from ..imageio import atomic_output, label_table_extension


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="totalseg_combine_masks",
        description="Combine TotalSegmentator classes into one binary mask.",
    )
    parser.add_argument(
        "-i",
        dest="input",
        type=Path,
        required=True,
        metavar="DIR_OR_FILE",
        help="TotalSegmentator output folder, or a multilabel NIfTI file.",
    )
    parser.add_argument(
        "-o", dest="output", type=Path, required=True, metavar="OUT.nii.gz", help="Path of the combined mask."
    )
    parser.add_argument(
        "-m",
        "--masks",
        dest="group",
        required=True,
        metavar="GROUP",
        help=f"Group to combine: {', '.join(GROUPS)}.",
    )
    parser.add_argument(
        "--task",
        default="total",
        help="Task whose classes a multilabel file without a label table has (default: total).",
    )
    parser.add_argument(
        "-ml",
        "--multilabel",
        action="store_true",
        help="Write the mask with a label table naming label 1 after the group, as a multilabel file.",
    )
    parser.add_argument(
        "-t",
        "--nora_tag",
        default="None",
        metavar="PROJECT",
        help="Accepted for compatibility with the official command; tagging in the nora database is not done.",
    )
    return parser


def combine_main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry ``totalseg_combine_masks``; user errors print one line and return 1.

    ``-ml`` and ``-t`` mean what they mean to the official command, so its scripts run unchanged.
    """
    args = _parser().parse_args(argv)
    try:
        image = combine_path(args.input, args.group, args.task)
        if args.multilabel:
            image.header.extensions.append(label_table_extension({1: args.group}))
        with atomic_output(args.output, overwrite=True) as tmp:
            nib.save(image, tmp)
    except TotalSegmentatorError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    if args.nora_tag not in ("None", ""):
        print(f"Note: not tagged in nora project {args.nora_tag}; nora is not part of this tool.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(combine_main())
