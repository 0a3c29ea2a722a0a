"""The label table of TotalSegmentator's multilabel NIfTI files, and the files that carry it."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Iterable, Mapping, Union

import nibabel as nib
import numpy as np

from .atomic import atomic_output
from .formats import NIFTI_SUFFIXES, has_suffix
from .labels import check_unique, label_array
from .read_errors import PathLike, read_errors
from .readers import read_nifti

# Label-table header extension of TotalSegmentator's multilabel NIfTI files: a Caret XML document in
# a NIfTI extension with code 0, laid out byte for byte as the official files have it so that tools
# reading those read ours. Colours cycle through a fixed 12-colour palette indexed by label % 12.
_CARET_CODE = 0
_CARET_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <Date><![CDATA[2013-07-14T05:45:09]]></Date>'
    '   <VolumeInformation Index="0">   <LabelTable>\n'
)
_CARET_TAIL = (
    "\n  </LabelTable>  <StudyMetaDataLinkSet>  </StudyMetaDataLinkSet>  <VolumeType><![CDATA[Label]]>"
    "</VolumeType>   </VolumeInformation></CaretExtension>\n              "
)
_CARET_PALETTE = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (255, 128, 0), (255, 0, 128), (128, 255, 128), (0, 128, 255), (128, 128, 128), (185, 170, 155),
)


def _mask_image(mask: np.ndarray, ref_img: nib.Nifti1Image) -> nib.Nifti1Image:
    """A uint8 image on ref's grid with ref's header (qform/sform, units): the official output header.

    Header extensions of the reference are dropped: they describe the input, not the mask, and a
    label table must be the first extension for the official reader to find it.
    """
    header = nib.Nifti1Header.from_header(ref_img.header)
    header.extensions.clear()
    header.set_data_dtype(np.uint8)
    return nib.Nifti1Image(mask, ref_img.affine, header)


def _check_nifti_path(path: PathLike) -> None:
    if not has_suffix(Path(path), NIFTI_SUFFIXES):
        raise ValueError(f"A NIfTI output needs a .nii or .nii.gz name, got {path}.")


def _check_file_name(name: str) -> None:
    """Refuse class names that would leave the output folder or be no file name at all."""
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"Class name {name!r} cannot be used as a file name.")


def check_class_file_names(names: Iterable[str]) -> None:
    """Refuse class names that cannot each name a file of their own in one folder."""
    names = list(names)
    for name in names:
        _check_file_name(name)
    check_unique([name.lower() for name in names], "class names (file names ignore case on some systems)")


def _caret_label(label: int, name: str) -> str:
    red, green, blue = (channel / 255 for channel in _CARET_PALETTE[label % len(_CARET_PALETTE)])
    cdata = name.replace("]]>", "]]]]><![CDATA[>")
    colour = f'Red="{red}" Green="{green}" Blue="{blue}" Alpha="1"'
    return f'<Label Key="{label}" {colour}><![CDATA[{cdata}]]></Label>\n'


def label_table_extension(label_map: Mapping[int, str]) -> nib.nifti1.Nifti1Extension:
    """The NIfTI header extension holding ``label_map`` in TotalSegmentator's format (order kept)."""
    body = "".join(_caret_label(int(label), name) for label, name in label_map.items())
    return nib.nifti1.Nifti1Extension(_CARET_CODE, (_CARET_HEAD + body + _CARET_TAIL).encode("utf-8"))


def _parse_label_table(content: bytes) -> dict[int, str]:
    root = ElementTree.fromstring(content.rstrip(b"\x00").strip())
    return {int(label.get("Key")): label.text or "" for label in root.iter("Label")}


def read_label_map(source: Union[PathLike, nib.Nifti1Image]) -> dict[int, str]:
    """Label id -> class name from a multilabel NIfTI's label-table extension ({} when it has none).

    Reads files written by the official TotalSegmentator and by :func:`write_multilabel_nifti`.
    """
    img = source if isinstance(source, nib.Nifti1Image) else read_nifti(Path(source))
    for extension in img.header.extensions:
        content = extension.get_content()
        if isinstance(content, bytes) and b"<CaretExtension" in content:
            with read_errors(img.get_filename() or "the image", "a label table"):
                return _parse_label_table(content)
    return {}


def write_multilabel_nifti(data: np.ndarray, ref_img: nib.Nifti1Image, label_map: Mapping[int, str], path: PathLike,
                           overwrite: bool = False) -> Path:
    """Write a uint8 label volume with ref's header and the label table, like the official output.

    Given the official's inputs the file is byte-identical to the official's (pinned by a test).
    """
    _check_nifti_path(path)
    img = _mask_image(label_array(data, ref_img, 255), ref_img)
    img.header.extensions.append(label_table_extension(label_map))
    with atomic_output(path, overwrite) as temp:
        nib.save(img, temp)
    return Path(path)


def write_class_files(data: np.ndarray, ref_img: nib.Nifti1Image, label_map: Mapping[int, str], out_dir: PathLike,
                      overwrite: bool = False) -> Path:
    """Write ``<name>.nii.gz`` (uint8 0/1, ref's header) for every class, empty ones included.

    The folder appears complete or not at all (see :func:`atomic_output` for existing folders).
    """
    check_class_file_names(label_map.values())
    labels = label_array(data, ref_img, 255)
    with atomic_output(out_dir, overwrite, directory=True) as temp:
        for label, name in label_map.items():
            mask = (labels == label).astype(np.uint8)
            nib.save(_mask_image(mask, ref_img), temp / f"{name}.nii.gz")
    return Path(out_dir)

