"""Volumes that are sequence proxies (4-D / time series): their frames, and a segmentation sequence beside them.

In Slicer a sequence browser shows one item of each of its sequences through a proxy node in the scene;
the items themselves (data nodes) live in the sequence's own scene. Segmenting every frame therefore
works on the data nodes (``Frame.volume``) and stores one segmentation per frame in a segmentation
sequence that the same browser synchronises by index value, with the output segmentation node as its
proxy. Changes the user makes to that proxy are saved back into the current frame.

The proxy node of a frame carries the parent transform; export a frame with
``volume_export.export_volume(frame.volume, path, transform_source=proxy)`` and build its segmentation
with ``segmentation_import.build_segmentation_node(..., transform_source=proxy)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import slicer
from totalseg_engine import InvalidInputError


@dataclass(frozen=True)
class Frame:
    """One item of a volume sequence: its position, index value (e.g. time) and data node."""

    index: int
    index_value: str
    volume: slicer.vtkMRMLScalarVolumeNode


def browser_of(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode) -> Optional[slicer.vtkMRMLSequenceBrowserNode]:
    """The first sequence browser that shows ``node`` as a proxy, or None when it is an ordinary node."""
    if node is None or node.GetID() is None:
        return None
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    for index in range(browsers.GetNumberOfItems()):
        browser = browsers.GetItemAsObject(index)
        if browser.IsProxyNodeID(node.GetID()):
            return browser
    return None


def sequence_of(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode) -> Optional[slicer.vtkMRMLSequenceNode]:
    """The sequence whose items ``node`` shows as a proxy, or None."""
    browser = browser_of(scene, node)
    return browser.GetSequenceNode(node) if browser is not None else None


def frames_of(scene: slicer.vtkMRMLScene, volume_node: slicer.vtkMRMLNode) -> list[Frame]:
    """Every frame of the volume sequence ``volume_node`` is a proxy of, in sequence order ([] if none)."""
    sequence = sequence_of(scene, volume_node)
    if sequence is None:
        return []
    return [
        Frame(index, sequence.GetNthIndexValue(index), sequence.GetNthDataNode(index))
        for index in range(sequence.GetNumberOfDataNodes())
        if sequence.GetNthDataNode(index).IsA("vtkMRMLScalarVolumeNode")
    ]


def _new_segmentation_sequence(scene: slicer.vtkMRMLScene, volume_sequence: slicer.vtkMRMLSequenceNode,
                               name: str) -> slicer.vtkMRMLSequenceNode:
    """An empty sequence indexed like ``volume_sequence`` (same index name, unit and type), so they match up."""
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName(volume_sequence.GetIndexName())
    sequence.SetIndexUnit(volume_sequence.GetIndexUnit())
    sequence.SetIndexType(volume_sequence.GetIndexType())
    return sequence


def segmentation_sequence_for(scene: slicer.vtkMRMLScene, volume_node: slicer.vtkMRMLNode,
                              segmentation_node: slicer.vtkMRMLSegmentationNode) -> slicer.vtkMRMLSequenceNode:
    """The sequence behind ``segmentation_node`` in ``volume_node``'s browser, created and attached if needed.

    A node already a proxy in that browser keeps its sequence (frames are then replaced one by one);
    otherwise a new sequence is synchronised in the browser with ``segmentation_node`` as its proxy.
    """
    browser = browser_of(scene, volume_node)
    if browser is None:
        raise InvalidInputError(f"Volume '{volume_node.GetName()}' is not shown by a sequence browser.")
    existing = browser.GetSequenceNode(segmentation_node) if segmentation_node.GetID() else None
    if existing is not None:
        return existing
    sequence = _new_segmentation_sequence(scene, browser.GetSequenceNode(volume_node),
                                          f"{segmentation_node.GetName()} sequence")
    browser.AddSynchronizedSequenceNodeID(sequence.GetID())
    browser.AddProxyNode(segmentation_node, sequence, False)
    browser.SetSaveChanges(sequence, True)
    return sequence


def set_frame_segmentation(sequence: slicer.vtkMRMLSequenceNode, index_value: str,
                           segmentation_node: slicer.vtkMRMLSegmentationNode) -> slicer.vtkMRMLNode:
    """Store a copy of ``segmentation_node`` as the item at ``index_value`` (replacing one there); return it."""
    return sequence.SetDataNodeAtValue(segmentation_node, index_value)


def assemble_segmentation_sequence(scene: slicer.vtkMRMLScene, volume_node: slicer.vtkMRMLNode,
                                   frame_segmentations: Mapping[str, slicer.vtkMRMLSegmentationNode],
                                   segmentation_node: slicer.vtkMRMLSegmentationNode,
                                   sequences_logic: Optional[slicer.vtkSlicerSequencesLogic] = None
                                   ) -> slicer.vtkMRMLSequenceNode:
    """Store per-frame segmentations (by index value) in the segmentation sequence of ``segmentation_node``.

    Index values must be those of the volume's frames, so every result is shown with the frame it was
    computed from. With ``sequences_logic`` the proxy is refreshed to the current frame at once.
    """
    known = {frame.index_value for frame in frames_of(scene, volume_node)}
    unknown = sorted(set(frame_segmentations) - known)
    if unknown:
        raise InvalidInputError(f"No frame of '{volume_node.GetName()}' has index value(s) {', '.join(unknown)}.")
    sequence = segmentation_sequence_for(scene, volume_node, segmentation_node)
    for index_value, frame_segmentation in frame_segmentations.items():
        set_frame_segmentation(sequence, index_value, frame_segmentation)
    if sequences_logic is not None:
        sequences_logic.UpdateProxyNodesFromSequences(browser_of(scene, volume_node))
    return sequence
