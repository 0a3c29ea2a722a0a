"""TotalSegmentator engine: the segmentation pipeline behind the Slicer module and the CLI.

Qt-free and MRML-free: it imports only the standard library, numpy, nibabel, SimpleITK,
scipy and (lazily, when a model runs) torch and nnunetv2.
"""

__version__ = "0.1.0"
