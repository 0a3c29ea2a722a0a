"""The masks the official tool derives for task body: ``body.nii.gz`` and ``skin.nii.gz`` beside the class files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .. import imageio


def body_and_skin(labels: np.ndarray, label_map: dict[int, str], ct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official derived masks of task body: body = trunc + extremities; skin = its outer shell at
    skin densities (-200..250 HU), without components of 5 voxels or fewer."""
    wanted = [label for label, name in label_map.items() if name in ("body_trunc", "body_extremities")]
    body = np.isin(labels, wanted)
    outer = ndimage.binary_dilation(body, iterations=1)  # one voxel outside the body
    shell = outer & ~ndimage.binary_erosion(outer, iterations=3)
    shell &= (ct > -200) & (ct < 250)
    components, _ = ndimage.label(shell)
    sizes = np.bincount(components.ravel())
    skin = shell & (sizes[components] > 5)
    return body.astype(np.uint8), skin.astype(np.uint8)


def write_derived_body_masks(image: nib.Nifti1Image, label_map: dict[int, str], ct: nib.Nifti1Image, folder: Path,
                             overwrite: bool) -> None:
    """body.nii.gz and skin.nii.gz beside the class files, as the official writes them for task body."""
    labels = np.asanyarray(image.dataobj)
    body, skin = body_and_skin(labels, label_map, ct.get_fdata())
    for name, mask in (("body", body), ("skin", skin)):
        imageio.write_class_files(mask, image, {1: name}, folder, overwrite=overwrite)
