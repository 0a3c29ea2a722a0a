"""Closed surfaces of the segmented structures, one STL or OBJ file each, for 3D printing and planning.

Each surface is made as 3D Slicer makes a segment's closed-surface representation from its labelmap
(``vtkBinaryLabelmapToClosedSurfaceConversionRule`` with its default smoothing factor 0.5): the mask padded by a
voxel so that a structure touching the image border is closed too, discrete flying edges on the voxel grid,
windowed-sinc smoothing (40 iterations, pass band 0.01, boundary and feature-edge smoothing off, non-manifold
smoothing and coordinate normalisation on), then the voxel-to-world transform and consistent normals.

Two departures, both for files that other programs can trust. The labels are meshed with their axes turned
closest to RAS, so the same anatomy gives the same surface however the image was stored (LPS or RAS), with normals
pointing outwards. A structure whose smoothing pinches it (see :func:`label_surface`) is smoothed less, so that
every file is watertight; the factor used is in the file's header.

Coordinates are millimetres in LPS (DICOM patient coordinates), as Slicer writes models since 4.11, and each
file says so in its header (``SPACE=LPS``), which Slicer reads back. VTK is imported only when surfaces are written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Mapping, Optional

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import InvalidOptionError
from ..imageio import atomic_output
from ..imageio.label_table import check_class_file_names
from ..imageio.labels import label_array

SURFACE_SUFFIXES = {"stl": ".stl", "obj": ".obj"}
SMOOTHING_FACTOR = 0.5  # Slicer's default for a segmentation's closed surface
MIN_SMOOTHING = 0.1  # below this, a pinched structure is left unsmoothed rather than halved again
PINCH_TOLERANCE_MM = 1e-3  # vertices closer than this are one to a reader merging a file's corners
SPACE = "LPS"
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
NOT_INSTALLED = ("Surface output (stl, obj) needs VTK: pip install 'slicer-totalsegmentator[surfaces]' (or pip "
                 "install vtk; Slicer and the web app have it), or choose another output type.")


@dataclass(frozen=True)
class Surface:
    """A structure's closed surface (``vtkPolyData``, world coordinates) and the smoothing factor it got."""

    mesh: Any
    smoothing: float


@dataclass(frozen=True)
class Smoothing:
    """Slicer's mapping of its smoothing factor (0 none to 1 strong) onto the windowed-sinc filter."""

    factor: float = SMOOTHING_FACTOR

    @property
    def pass_band(self) -> float:
        return 10.0 ** (-4.0 * self.factor)

    @property
    def iterations(self) -> int:
        return int(20 + self.factor * 40)


def check_available() -> None:
    """Refuse surface output before any work when VTK is missing."""
    if find_spec("vtkmodules") is None:
        raise InvalidOptionError(NOT_INSTALLED)


def write_surfaces(data: np.ndarray, ref_img: nib.Nifti1Image, label_map: Mapping[int, str], out_dir: os.PathLike,
                   file_format: str, overwrite: bool = False) -> Path:
    """Write ``<class>.stl`` or ``<class>.obj`` for every class into ``out_dir``, in LPS millimetres.

    A class absent from the image gets a file without triangles, as the class-file NIfTI output writes empty masks:
    one file per class, and none left over from an earlier run. The folder appears complete or not at all.
    """
    suffix = SURFACE_SUFFIXES[file_format]
    check_class_file_names(label_map.values())
    labels, affine = closest_to_ras(label_array(data, ref_img, 255), ref_img.affine)
    boxes = ndimage.find_objects(labels)
    to_world = RAS_TO_LPS @ affine
    with atomic_output(out_dir, overwrite, directory=True) as temp:
        for label, name in label_map.items():
            box = boxes[label - 1] if 0 < label <= len(boxes) else None
            write_surface(label_surface(labels, label, box, to_world), temp / f"{name}{suffix}", name)
    return Path(out_dir)


def closest_to_ras(labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels with their axes permuted and flipped to run closest to R, A, S, and the affine that goes with them.

    The triangles that flying edges chooses, and so the smoothed surface, depend on the direction the voxels are
    walked in; meshing the same anatomy in one axis order gives the same surface whether the image was stored
    right-to-left (DICOM-like, LPS) or left-to-right (RAS)."""
    canonical = nib.as_closest_canonical(nib.Nifti1Image(labels, affine))
    return np.asanyarray(canonical.dataobj), canonical.affine


def label_surface(labels: np.ndarray, label: int, box: Optional[tuple[slice, ...]], to_world: np.ndarray,
                  smoothing: Smoothing = Smoothing()) -> Surface:
    """The smoothed closed surface of voxels equal to ``label`` within ``box``, in the coordinates ``to_world``
    maps voxel indices to; an empty one when ``box`` is None.

    Where smoothing squeezes the two sides of a part one voxel thin onto each other, distinct vertices land on one
    position: closed in memory, but pinched once a file without shared vertices (STL) is read back and its corners
    merged. Such a structure is smoothed again with half the factor, down to none (flying edges alone never pinch),
    so that every file is watertight; the factor used is returned and written in the file's header.
    """
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    if box is None:
        return Surface(vtkPolyData(), smoothing.factor)
    mask = np.pad(labels[box] == label, 1).astype(np.uint8)
    corner = [part.start - 1 for part in box]  # the padding's first voxel, as an index of the whole image
    unsmoothed = _flying_edges(mask, corner)
    factor = smoothing.factor if unsmoothed.GetNumberOfPolys() else 0.0
    while True:
        surface = _in_world(_smoothed(unsmoothed, Smoothing(factor)) if factor > 0 else unsmoothed, to_world)
        if factor == 0 or not pinched(surface):
            return Surface(surface, factor)
        factor = factor / 2 if factor > MIN_SMOOTHING else 0.0


def pinched(surface, tolerance_mm: float = PINCH_TOLERANCE_MM) -> bool:
    """Whether two distinct vertices lie within ``tolerance_mm`` of each other (a reader merging corners would make
    them one, and the surface would no longer be a closed manifold)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    points = vtk_to_numpy(surface.GetPoints().GetData()).astype(float)
    return bool(cKDTree(points).query_pairs(tolerance_mm, output_type="ndarray").size)


def _flying_edges(mask: np.ndarray, corner: list[int]):
    """Triangles between the mask's voxels and the rest, in voxel indices of the whole image."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D

    image = vtkImageData()
    image.SetExtent(*(value for start, size in zip(corner, mask.shape) for value in (start, start + size - 1)))
    # VTK's x index varies fastest: Fortran order of nibabel's (i, j, k) array.
    image.GetPointData().SetScalars(numpy_to_vtk(np.ravel(mask, order="F"), deep=True))
    edges = vtkDiscreteFlyingEdges3D()
    edges.SetInputData(image)
    edges.ComputeGradientsOff()
    edges.ComputeNormalsOff()
    edges.ComputeScalarsOff()
    edges.SetValue(0, 1)
    edges.Update()
    return edges.GetOutput()


def _smoothed(surface, smoothing: Smoothing):
    from vtkmodules.vtkFiltersCore import vtkWindowedSincPolyDataFilter

    smoother = vtkWindowedSincPolyDataFilter()
    smoother.SetInputData(surface)
    smoother.SetNumberOfIterations(smoothing.iterations)
    smoother.SetPassBand(smoothing.pass_band)
    smoother.BoundarySmoothingOff()
    smoother.FeatureEdgeSmoothingOff()
    smoother.NonManifoldSmoothingOn()
    smoother.NormalizeCoordinatesOn()
    smoother.Update()
    return smoother.GetOutput()


def _in_world(surface, to_world: np.ndarray):
    """The surface moved into world coordinates, triangles wound (and normals pointing) out of the structure."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4
    from vtkmodules.vtkCommonTransforms import vtkTransform
    from vtkmodules.vtkFiltersCore import vtkPolyDataNormals
    from vtkmodules.vtkFiltersGeneral import vtkTransformPolyDataFilter

    matrix = vtkMatrix4x4()
    matrix.DeepCopy(np.asarray(to_world, dtype=float).ravel())
    transform = vtkTransform()
    transform.SetMatrix(matrix)
    moved = vtkTransformPolyDataFilter()
    moved.SetInputData(surface)
    moved.SetTransform(transform)
    normals = vtkPolyDataNormals()
    normals.SetInputConnection(moved.GetOutputPort())
    normals.ConsistencyOn()
    normals.SplittingOff()
    # a mirroring voxel-to-world matrix (negative determinant) turns every triangle inside out: turn them back
    normals.SetFlipNormals(bool(np.linalg.det(to_world[:3, :3]) < 0))
    normals.Update()
    return normals.GetOutput()


def write_surface(surface: Surface, path: Path, name: str) -> None:
    """One surface as binary STL or as OBJ (vertices, normals, triangles), its header naming the structure, the
    coordinate system and the smoothing factor."""
    header = f"TotalSegmentator {name} SPACE={SPACE} smoothing={surface.smoothing:g}"
    if not surface.mesh.GetNumberOfPolys():  # VTK's writers refuse an empty surface
        _write_empty(path, header, name)
    elif path.suffix == ".stl":
        _write_stl(surface.mesh, path, header)
    else:
        _write_obj(surface.mesh, path, header, name)


def surface_file_has_triangles(path: Path) -> bool:
    """Whether a surface file of ours holds any triangle (an absent structure's file holds none)."""
    if path.suffix.lower() == ".stl":
        with path.open("rb") as handle:
            handle.seek(80)
            return int.from_bytes(handle.read(4), "little") > 0
    with path.open("rb") as handle:
        return any(line.startswith(b"f ") for line in handle)


def _write_empty(path: Path, header: str, name: str) -> None:
    """A surface without triangles: a binary STL of zero facets, an OBJ of its header alone."""
    if path.suffix == ".stl":
        path.write_bytes(header.encode()[:80].ljust(80, b"\0") + (0).to_bytes(4, "little"))
    else:
        path.write_text(_obj_header(header, name), encoding="utf-8")


def _obj_header(header: str, name: str) -> str:
    return f"# {header}\no {name}\n"


def _write_stl(surface, path: Path, header: str) -> None:
    from vtkmodules.vtkIOGeometry import vtkSTLWriter

    writer = vtkSTLWriter()
    writer.SetInputData(surface)
    writer.SetFileName(str(path))
    writer.SetFileTypeToBinary()
    writer.SetHeader(header[:80])  # a binary STL's header has 80 bytes
    _write_checked(writer, path)


def _write_obj(surface, path: Path, header: str, name: str) -> None:
    """vtkOBJWriter's file, its own comment line replaced by ours and the object named."""
    from vtkmodules.vtkIOGeometry import vtkOBJWriter

    raw = path.with_name(path.name + ".vtk-obj")
    writer = vtkOBJWriter()
    writer.SetInputData(surface)
    writer.SetFileName(str(raw))
    try:
        _write_checked(writer, raw)
        with raw.open("rb") as source, path.open("wb") as target:
            target.write(_obj_header(header, name).encode())
            for line in source:
                if not line.startswith(b"#"):
                    target.write(line)
    finally:
        raw.unlink(missing_ok=True)


def _write_checked(writer, path: Path) -> None:
    """Write, and turn VTK's silent failure (an error message, no exception) into one."""
    if not writer.Write() or not path.is_file():
        raise OSError(f"Could not write the surface {path}.")
