"""Slicer-side helpers of the TotalSegmentator module that need MRML but no Qt and no running application.

Every function takes the scene, nodes and logic objects it works on as arguments (never ``slicer.mrmlScene``
or ``slicer.app``), so the same code runs in Slicer and in tests against the ``slicer-core`` wheel. The
package imports nothing at import time: ``dependencies`` must work before the engine's packages exist.

- ``volume_export``: write a scalar volume node to NIfTI/NRRD with its exact world geometry.
- ``segmentation_import``: put a label image into a segmentation node (named, coloured, tagged segments),
  replacing only the segments of an earlier run of the same task, all-or-nothing.
- ``seg_nrrd``: save a segmentation node as ``.seg.nrrd`` through Slicer's own storage node.
- ``statistics_table``: per-class volume and intensity as a table node.
- ``sequences``: volumes that are sequence proxies: their frames, and a segmentation sequence beside them.
"""
