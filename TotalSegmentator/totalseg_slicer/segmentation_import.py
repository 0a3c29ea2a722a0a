"""Put a TotalSegmentator label image into a segmentation node: one named, coloured, tagged segment per class.

Geometry
    The labels must cover the reference volume's voxels: either an array already in the volume's voxel
    order (x, y, z = i, j, k) or an image whose grid is the volume's world grid up to axis order and
    direction (the official DICOM conversion is LAS where Slicer reads LPS). They are re-ordered, never
    resampled, and stored with the volume's own IJK-to-RAS matrix, so every segment voxel is a volume voxel.
    All segments share one labelmap (one layer) holding the class label values, as Slicer does for
    imported labelmaps.

Tags
    Each segment carries ``TotalSegmentator.Class`` (the class name) and ``TotalSegmentator.Task``, plus
    Slicer's ``TerminologyEntry`` when the caller's ``segment_info`` gives one (kept as an opaque string).

Re-running into a node that already has segments (``replace_existing``)
    Replaced are exactly the segments tagged with the same task and one of the run's classes, present in
    the new result or not (an absent class would otherwise leave a stale segment behind), even if renamed
    or edited: the tags, not the names, say where a segment came from. Untagged segments are never
    touched, whatever their name: they are the user's (or another tool's) and may hold manual work; a new
    segment may then share a name with one of them. ``segments_to_replace`` lists the replaced segments so
    the panel can ask first. New segments take the place of the first replaced one in the list.

All or nothing
    Segments are built completely (labels checked, names, colours and tags applied) before the node is
    touched, in a staging list of ``vtkSegment`` objects over one new labelmap. A temporary segmentation
    node is not used for staging on purpose: moving segments out of a vtkSegmentation makes Slicer split
    their shared labelmap, one full-volume copy per segment. If adding them to the node fails anyway,
    the added ones are taken out and the replaced ones put back in their places.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Union

import numpy as np
import slicer
import vtk
from totalseg_engine import InvalidInputError, array_onto_grid
from vtk.util import numpy_support

from .volume_export import array_to_matrix, check_scalar_volume, ijk_to_ras, ijk_to_world, to_world

if TYPE_CHECKING:
    import nibabel as nib

BINARY_LABELMAP = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
CLASS_TAG = "TotalSegmentator.Class"
TASK_TAG = "TotalSegmentator.Task"
TERMINOLOGY_TAG = slicer.vtkSegment.GetTerminologyEntryTagName()
# Read by Slicer's DICOM SEG export (DICOMSegmentationPlugin.py): without them every segment is exported as MANUAL.
ALGORITHM_TYPE_TAG = "DICOM.SegmentAlgorithmType"
ALGORITHM_NAME_TAG = "DICOM.SegmentAlgorithmName"

GRID_TOLERANCE_MM = 1e-3
"""How far (mm) the labels' grid may lie from the volume's: above NIfTI's float32 rounding, far below a voxel."""

SegmentInfoFn = Callable[[int, str], tuple[str, Sequence[float], Optional[str]]]
"""(label, class name) -> (display name, colour RGB in 0..1 or None for Slicer's choice, terminology entry or None)."""



@dataclass(frozen=True)
class LabelImage:
    """Labels (voxel order x, y, z) and their RAS affine, read without nibabel (see :func:`read_label_image`)."""

    array: np.ndarray
    affine: np.ndarray


LabelSource = Union[str, os.PathLike, "nib.spatialimages.SpatialImage", LabelImage, np.ndarray]


def read_label_image(path: Union[str, os.PathLike]) -> LabelImage:
    """A label file (NIfTI, NRRD ...) read with SimpleITK, which Slicer ships: a Slicer that segments on a remote
    server has no nibabel."""
    import SimpleITK as sitk
    from totalseg_engine import sitk_to_array

    try:
        image = sitk.ReadImage(os.fspath(path))
    except RuntimeError as err:
        raise InvalidInputError(f"Could not read the segmentation {os.fspath(path)}: {err}") from err
    return LabelImage(*sitk_to_array(image))


# --------------------------------------------------------------------------------------------------
# Labels onto the reference volume's voxels
# --------------------------------------------------------------------------------------------------


def _read_labels(labels: LabelSource, affine: Optional[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The voxel array and its affine (None: already on the volume's voxels) of any accepted label source."""
    if isinstance(labels, (str, os.PathLike)):
        from totalseg_engine import read_image  # nibabel: the engine's own reader, as the local run reads

        labels = read_image(labels)
    if isinstance(labels, LabelImage):
        return labels.array, labels.affine if affine is None else affine
    if not isinstance(labels, np.ndarray) and "nibabel" in sys.modules:  # no image without nibabel loaded
        return np.asanyarray(labels.dataobj), labels.affine if affine is None else affine
    return np.asanyarray(labels), affine


def _as_label_values(array: np.ndarray) -> np.ndarray:
    """The labels as a 3-D uint8 (uint16 above 255) array; trailing length-1 axes dropped."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InvalidInputError(f"Expected a 3-D label image, got shape {array.shape}.")
    if array.dtype.kind not in "biuf" or (array.dtype.kind == "f" and not np.array_equal(array, np.round(array))):
        raise InvalidInputError(f"Label image has non-integer values (type {array.dtype}).")
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    if low < 0 or high > 65535:
        raise InvalidInputError(f"Label values must lie in 0..65535, got {low}..{high}.")
    return array.astype(np.uint8 if high <= 255 else np.uint16, copy=False)


def _volume_shape(volume_node: slicer.vtkMRMLVolumeNode) -> tuple[int, int, int]:
    return tuple(int(n) for n in volume_node.GetImageData().GetDimensions())


def labels_on_volume_grid(labels: np.ndarray, affine: Optional[np.ndarray], reference_volume: slicer.vtkMRMLVolumeNode,
                          tolerance: float = GRID_TOLERANCE_MM,
                          transform_source: Optional[slicer.vtkMRMLTransformableNode] = None) -> np.ndarray:
    """``labels`` in the volume's voxel order (x, y, z = i, j, k), checked to cover exactly its voxels.

    With an affine, the labels' grid must be the volume's world grid (see ``volume_export.ijk_to_world``)
    up to axis permutation and flips, within ``tolerance`` mm. Without one, only the shape is checked.
    """
    array = _as_label_values(labels)
    shape = _volume_shape(reference_volume)
    if affine is None:
        if array.shape != shape:
            raise InvalidInputError(f"Label array shape {array.shape} differs from the volume's {shape}.")
        return array
    try:
        moved, _ = array_onto_grid(array, affine, ijk_to_world(reference_volume, transform_source), shape, tolerance)
    except ValueError as err:
        raise InvalidInputError(
            f"The segmentation does not lie on the voxels of volume '{reference_volume.GetName()}' (it was computed "
            f"for another image or the volume was moved since). {err}"
        ) from err
    return moved


def _labels_for(labels: LabelSource, affine: Optional[np.ndarray], reference_volume: slicer.vtkMRMLScalarVolumeNode,
                tolerance: float, transform_source: Optional[slicer.vtkMRMLTransformableNode] = None) -> np.ndarray:
    """Any accepted label source as a label array in the (checked) reference volume's voxel order."""
    check_scalar_volume(reference_volume)
    array, array_affine = _read_labels(labels, affine)
    return labels_on_volume_grid(array, array_affine, reference_volume, tolerance, transform_source)


def _present_classes(labels: np.ndarray, label_map: Mapping[int, str]) -> dict[int, str]:
    """Classes of ``label_map`` that have voxels, in label order."""
    counts = np.bincount(labels.ravel())
    return {int(label): name for label, name in sorted(label_map.items()) if 0 < label < len(counts) and counts[label]}


def _only(labels: np.ndarray, kept: Iterable[int]) -> np.ndarray:
    """``labels`` with every value outside ``kept`` set to 0, so no unnamed voxels hide in the shared labelmap."""
    table = np.zeros(int(labels.max(initial=0)) + 1, dtype=labels.dtype)
    kept = [label for label in kept if label < len(table)]
    table[kept] = kept
    return labels if np.array_equal(table, np.arange(len(table))) else table[labels]


# --------------------------------------------------------------------------------------------------
# Staging: segments built completely before the node is touched
# --------------------------------------------------------------------------------------------------


def _voxels(image: vtk.vtkImageData) -> np.ndarray:
    """Writable (z, y, x) numpy view of an image's scalars."""
    x, y, z = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(z, y, x)


def _oriented_labelmap(labels: np.ndarray, image_to_world: np.ndarray) -> slicer.vtkOrientedImageData:
    """One vtkOrientedImageData holding ``labels`` (x, y, z) placed by ``image_to_world``."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*labels.shape)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR if labels.dtype == np.uint8 else vtk.VTK_UNSIGNED_SHORT, 1)
    _voxels(image)[:] = labels.transpose()
    image.SetImageToWorldMatrix(array_to_matrix(image_to_world))
    return image


def _checked_color(color: Sequence[float], name: str) -> tuple[float, float, float]:
    values = tuple(float(c) for c in color)
    if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
        raise InvalidInputError(f"Colour {tuple(color)} of class '{name}' is not three values in 0..1.")
    return values


def _new_segment(label: int, name: str, task: str, info: Optional[SegmentInfoFn],
                 labelmap: slicer.vtkOrientedImageData) -> slicer.vtkSegment:
    """A segment for one class; without ``info`` it is named after the class and Slicer picks the colour."""
    display_name, color, terminology = info(label, name) if info else (name, None, None)
    if not isinstance(display_name, str) or not display_name:
        raise InvalidInputError(f"Class '{name}' got no usable segment name ({display_name!r}).")
    segment = slicer.vtkSegment()
    segment.SetName(display_name)
    segment.SetNameAutoGenerated(False)
    if color is not None:
        segment.SetColor(*_checked_color(color, name))
        segment.SetColorAutoGenerated(False)
    segment.SetLabelValue(label)
    segment.AddRepresentation(BINARY_LABELMAP, labelmap)
    segment.SetTag(CLASS_TAG, name)
    segment.SetTag(TASK_TAG, task)
    segment.SetTag(ALGORITHM_TYPE_TAG, "AUTOMATIC")
    segment.SetTag(ALGORITHM_NAME_TAG, "TotalSegmentator")
    if terminology:
        segment.SetTag(TERMINOLOGY_TAG, terminology)
    return segment


def stage_segments(labels: np.ndarray, image_to_world: np.ndarray, label_map: Mapping[int, str], task: str,
                   segment_info: Optional[SegmentInfoFn] = None) -> list[tuple[str, slicer.vtkSegment]]:
    """(class name, segment) for every class present in ``labels`` (x, y, z), all over one shared labelmap."""
    present = _present_classes(labels, label_map)
    labelmap = _oriented_labelmap(_only(labels, present), image_to_world)
    return [(name, _new_segment(label, name, task, segment_info, labelmap)) for label, name in present.items()]


# --------------------------------------------------------------------------------------------------
# Which segments a run replaces
# --------------------------------------------------------------------------------------------------


def segment_tag(segment: slicer.vtkSegment, tag: str) -> Optional[str]:
    """The value of a segment's tag, or None when it has none."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) else None


def segments_to_replace(segmentation_node: slicer.vtkMRMLSegmentationNode, task: str,
                        classes: Iterable[str]) -> list[str]:
    """IDs of the segments a run of ``task`` over ``classes`` would replace, in list order.

    Ours are tagged with the task and class. The existing TotalSegmentator extension tagged nothing but used the
    class name as segment ID, so an untagged segment whose ID is one of the classes is that class too.
    """
    wanted = set(classes)
    segmentation = segmentation_node.GetSegmentation()
    return [segment_id for segment_id in segmentation.GetSegmentIDs()
            if _is_run_segment(segmentation.GetSegment(segment_id), segment_id, task, wanted)]


def _is_run_segment(segment: slicer.vtkSegment, segment_id: str, task: str, wanted: set[str]) -> bool:
    class_name = segment_tag(segment, CLASS_TAG)
    if class_name is None:
        return segment_id in wanted  # made by the existing extension: ID = class name
    return segment_tag(segment, TASK_TAG) == task and class_name in wanted


# --------------------------------------------------------------------------------------------------
# Commit: add the staged segments, remove the replaced ones, or leave everything as it was
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Detached:
    """A segment taken out of a segmentation, with the labelmap it used, so it can be put back."""

    segment_id: str
    segment: slicer.vtkSegment
    labelmap: Optional[vtk.vtkDataObject]


def _detach(segmentation: slicer.vtkSegmentation, segment_ids: Iterable[str]) -> list[_Detached]:
    """Remove segments without letting Slicer copy them out of their shared labelmap.

    ``RemoveSegment`` first separates a segment from a shared labelmap into a full-size labelmap of its
    own (measured: a quarter second and a volume of memory per segment on a CT), which is pure waste
    here. Dropping the representation first skips that; its voxels stay in the layer until
    ``_clear_stale`` (or a restore) deals with them.
    """
    detached = []
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        labelmap = segment.GetRepresentation(BINARY_LABELMAP)
        if labelmap is not None:
            segment.RemoveRepresentation(BINARY_LABELMAP)
        segmentation.RemoveSegment(segment_id)
        detached.append(_Detached(segment_id, segment, labelmap))
    return detached


def _reattach(segmentation: slicer.vtkSegmentation, detached: Iterable[_Detached], order: Sequence[str]) -> None:
    """Put detached segments back on their labelmaps and restore the segment order ``order``."""
    for item in detached:
        if item.labelmap is not None:
            item.segment.AddRepresentation(BINARY_LABELMAP, item.labelmap)
        segmentation.AddSegment(item.segment, item.segment_id)
    segmentation.ReorderSegments(list(order))


def _clear_stale(segmentation: slicer.vtkSegmentation, detached: Iterable[_Detached]) -> None:
    """Zero the voxels of removed segments in labelmaps other segments still use.

    Left there, they would appear in whichever segment later gets the same label value in that layer.
    """
    layers: dict[int, tuple[vtk.vtkDataObject, list[int]]] = {}
    for item in detached:
        if item.labelmap is not None:
            layers.setdefault(id(item.labelmap), (item.labelmap, []))[1].append(item.segment.GetLabelValue())
    for labelmap, labels in layers.values():
        if segmentation.GetSegmentIDsForDataObject(labelmap, BINARY_LABELMAP):
            voxels = _voxels(labelmap)
            voxels[np.isin(voxels, labels)] = 0
            labelmap.Modified()


def _insert_position(order: Sequence[str], replaced: Iterable[str]) -> str:
    """ID of the segment the new ones go before: the first one after the first replaced ('' = the end)."""
    replaced = set(replaced)
    positions = [index for index, segment_id in enumerate(order) if segment_id in replaced]
    if not positions:
        return ""
    return next((segment_id for segment_id in order[positions[0]:] if segment_id not in replaced), "")


def _add_segment(segmentation: slicer.vtkSegmentation, base_id: str, segment: slicer.vtkSegment,
                 before: str) -> str:
    segment_id = segmentation.GenerateUniqueSegmentID(base_id)
    if not segmentation.AddSegment(segment, segment_id, before):
        raise RuntimeError(f"Slicer could not add segment '{segment.GetName()}'.")
    return segment_id


def commit_segments(segmentation: slicer.vtkSegmentation, staged: Sequence[tuple[str, slicer.vtkSegment]],
                    replace_ids: Sequence[str]) -> list[str]:
    """Swap ``replace_ids`` for the staged segments; on any failure restore the segmentation and re-raise."""
    order = list(segmentation.GetSegmentIDs())
    before = _insert_position(order, replace_ids)
    detached = _detach(segmentation, replace_ids)
    added: list[str] = []
    try:
        for base_id, segment in staged:
            added.append(_add_segment(segmentation, base_id, segment, before))
    except BaseException:
        _detach(segmentation, added)
        _reattach(segmentation, detached, order)
        raise
    _clear_stale(segmentation, detached)
    return added


# --------------------------------------------------------------------------------------------------
# Node set-up and subject hierarchy
# --------------------------------------------------------------------------------------------------


def _volume_to_segmentation(volume_node: slicer.vtkMRMLVolumeNode,
                            segmentation_node: slicer.vtkMRMLSegmentationNode) -> np.ndarray:
    """Matrix from the volume's local coordinates to the segmentation's; exactly identity when they share one."""
    if volume_node.GetTransformNodeID() == segmentation_node.GetTransformNodeID():
        return np.eye(4)
    return np.linalg.inv(to_world(segmentation_node)) @ to_world(volume_node)


def place_in_subject_hierarchy(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode,
                               reference_volume: slicer.vtkMRMLNode) -> int:
    """Put ``node`` beside ``reference_volume`` (under its study); return its item (0 when the scene has none).

    A node the user already filed somewhere (not directly under the scene) stays where it is.
    """
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None or node.GetScene() is None:
        return 0
    scene_item = hierarchy.GetSceneItemID()
    volume_item = hierarchy.GetItemByDataNode(reference_volume)
    parent = hierarchy.GetItemParent(volume_item) if volume_item else scene_item
    item = hierarchy.GetItemByDataNode(node)
    if not item:
        return hierarchy.CreateItem(parent, node)
    if hierarchy.GetItemParent(item) == scene_item:
        hierarchy.SetItemParent(item, parent)
    return item


def _finish_node(segmentation_node: slicer.vtkMRMLSegmentationNode, reference_volume: slicer.vtkMRMLVolumeNode) -> None:
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    if segmentation_node.GetScene() is not None and segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def import_segmentation(scene: slicer.vtkMRMLScene, labels: LabelSource,
                        segmentation_node: slicer.vtkMRMLSegmentationNode,
                        reference_volume: slicer.vtkMRMLScalarVolumeNode, label_map: Mapping[int, str], task: str,
                        segment_info: Optional[SegmentInfoFn] = None, replace_existing: bool = True,
                        affine: Optional[np.ndarray] = None, tolerance: float = GRID_TOLERANCE_MM) -> list[str]:
    """Import ``labels`` into ``segmentation_node``; return the new segment IDs in label order.

    ``labels`` is a file path (NIfTI, NRRD, ...), a nibabel image, or an array with ``affine`` (RAS) or,
    without one, already in the reference volume's voxel order. ``label_map`` maps label values to the
    task's class names; classes without voxels get no segment, values missing from it are ignored. See the
    module docstring for geometry, tags, replacement and the all-or-nothing guarantee.
    """
    voxels = _labels_for(labels, affine, reference_volume, tolerance)
    placement = _volume_to_segmentation(reference_volume, segmentation_node) @ ijk_to_ras(reference_volume)
    staged = stage_segments(voxels, placement, label_map, task, segment_info)
    replace_ids = segments_to_replace(segmentation_node, task, label_map.values()) if replace_existing else []
    was_modifying = segmentation_node.StartModify()
    try:
        segment_ids = commit_segments(segmentation_node.GetSegmentation(), staged, replace_ids)
        _finish_node(segmentation_node, reference_volume)
    finally:
        segmentation_node.EndModify(was_modifying)
    place_in_subject_hierarchy(scene, segmentation_node, reference_volume)
    return segment_ids


def import_official_output(scene: slicer.vtkMRMLScene, path: Union[str, os.PathLike],
                           segmentation_node: slicer.vtkMRMLSegmentationNode,
                           reference_volume: slicer.vtkMRMLScalarVolumeNode, task: str,
                           segment_info: Optional[SegmentInfoFn] = None, replace_existing: bool = True,
                           tolerance: float = GRID_TOLERANCE_MM) -> list[str]:
    """Import a multilabel NIfTI written by TotalSegmentator (``--ml``) using the label table in its header."""
    from totalseg_engine import read_image, read_label_map

    image = read_image(path)
    label_map = read_label_map(image)
    if not label_map:
        raise InvalidInputError(f"{path} has no TotalSegmentator label table; pass its label map explicitly.")
    return import_segmentation(scene, image, segmentation_node, reference_volume, label_map, task, segment_info,
                               replace_existing, tolerance=tolerance)


def build_segmentation_node(labels: LabelSource, reference_volume: slicer.vtkMRMLScalarVolumeNode,
                            label_map: Mapping[int, str], task: str, segment_info: Optional[SegmentInfoFn] = None,
                            affine: Optional[np.ndarray] = None,
                            transform_source: Optional[slicer.vtkMRMLTransformableNode] = None,
                            tolerance: float = GRID_TOLERANCE_MM) -> slicer.vtkMRMLSegmentationNode:
    """A new scene-less segmentation node with the classes present, on ``reference_volume``'s own voxels.

    Meant for sequence frames (``sequences.set_frame_segmentation`` copies it into the sequence), whose
    data nodes live outside the main scene: ``transform_source`` (the proxy node) gives the world
    placement the labels' affine is checked against; the segments use the frame's local IJK to RAS.
    """
    voxels = _labels_for(labels, affine, reference_volume, tolerance, transform_source)
    segmentation_node = slicer.vtkMRMLSegmentationNode()
    segmentation = segmentation_node.GetSegmentation()
    placement = ijk_to_ras(reference_volume)
    commit_segments(segmentation, stage_segments(voxels, placement, label_map, task, segment_info), [])
    # The geometry only, no node reference: the frame's node lives in the sequence's scene, where its ID
    # would name some other node once the segmentation is copied around.
    geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(array_to_matrix(placement),
                                                                      reference_volume.GetImageData())
    segmentation.SetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                                        geometry)
    return segmentation_node
