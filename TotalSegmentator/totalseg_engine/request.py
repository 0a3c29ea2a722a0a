"""One segmentation request: everything a run is asked for, whichever front end asked.

Each option is one field of :class:`SegmentationRequest`, declared once with its command-line flag. The parser of
``TotalSegmentator`` and ``totalseg_batch`` is built from these fields (:mod:`.cli.options`), the child process's
command line is :meth:`SegmentationRequest.to_argv`, and what a remote client sends is
:meth:`SegmentationRequest.to_json`. Every front end converts its own vocabulary into a request once, at its edge
(the panel's parameter node, the official API's keywords, a cohort's options, a web form); everything below it
passes the request on. Where the input is and where outputs go are not part of the request: they belong to the
machine that runs it.

Adding an option: one field here with its :class:`Flag`, and the code where it acts.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from .errors import InvalidOptionError
from .tasks import SPEEDS

OUTPUT_TYPES = ("nifti", "seg_nrrd", "dicom_seg", "dicom_rtstruct", "stl", "obj")
RUNTIMES = ("auto", "onnxruntime", "openvino", "torch", "torch_compile", "nnunet")
STATISTIC_AGGREGATIONS = ("mean", "median")
MODEL_SIZES = ("big", "small")
SMALL_MODEL_TASK = "total_v3"  # the only task released in both sizes (official python_api.py)
RESAMPLING_ORDERS = (0, 1, 2, 3, 4, 5)
OVERWRITE_POLICIES = ("outputs", "always", "never")
"""outputs: replace earlier segmentation outputs, keep any other file (the command line's default); always: replace
whatever is there (``--overwrite``); never: refuse any existing output (``--no-overwrite``)."""
SECRET_FIELDS = ("license_number",)
DEFAULT_BLOB_MM3 = 200.0
"""Size below which ``--remove_small_blobs`` without a value removes connected components (the official default)."""


@dataclass(frozen=True)
class Flag:
    """How one request field is spelled on the command line.

    ``kind``:
      - ``switch``: present means True (``negated``: present means False);
      - ``value``: one value (``type``, ``choices``);
      - ``values``: one or more values (a tuple);
      - ``optional``: the flag alone means ``const``, with a value that value (``-rmb [mm3]``, ``-s [filepath]``);
      - ``choice``: each of ``names`` sets the field to its value in ``by_flag``; when several are given the first
        of ``by_flag`` wins (``-f`` over ``-ff``), and ``exclusive`` refuses several instead.
    """

    names: tuple[str, ...]
    help: str
    kind: str = "switch"
    negated: bool = False
    type: Callable[[str], Any] = str
    choices: Optional[tuple] = None
    metavar: Optional[str] = None
    const: Any = None
    by_flag: Optional[Mapping[str, Any]] = None
    exclusive: bool = False

    @property
    def long(self) -> str:
        """The name the child process's argv uses: the longest spelling (the first of equally long ones)."""
        return max(self.names, key=len)

    def name_for(self, value: Any) -> str:
        """For a ``choice`` flag: the (longest) name that sets ``value``."""
        return max((name for name, given in self.by_flag.items() if given == value), key=len)


def option(default: Any, *names: str, help: str, **spec: Any) -> Any:
    """A request field with its command-line flag (``spec``: the other :class:`Flag` attributes)."""
    flag = Flag(names, help, **spec)
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata={"flag": flag})
    return field(default=default, metadata={"flag": flag})


def _positive_mm3(value: Any) -> Optional[float]:
    """``remove_small_blobs``: None/False (off), True (the official default size) or a size in mm³."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_BLOB_MM3
    number = float(value)
    if not number > 0:
        raise InvalidOptionError(f"remove_small_blobs must be a positive size in mm3, got {value!r}.")
    return number


@dataclass(frozen=True)
class SegmentationRequest:
    """What to segment for and what to write: every option of a run, typed and validated on creation.

    Frozen, so that a request handed down cannot change on the way; derive a variant with
    :func:`dataclasses.replace`. Values are checked for form here (known speed, output type, runtime ...);
    whether the task, its speed or its classes exist is the registry's answer when the run starts.
    """

    task: str = option("total", "-ta", "--task", kind="value", metavar="task",
                       help="Task to run (see --list-tasks). Default: total.")
    speed: str = option("normal", "-f", "--fast", "-ff", "--fastest", kind="choice",
                        by_flag={"-f": "fast", "--fast": "fast", "-ff": "fastest", "--fastest": "fastest"},
                        help="-f/--fast: the 3 mm models (faster, less accurate); -ff/--fastest: the 6 mm models; "
                             "-f wins over -ff.")
    roi_subset: tuple[str, ...] = option((), "-rs", "--roi_subset", kind="values", metavar="class",
                                         help="Only these classes (task total/total_mr); runs only the part models "
                                              "needed.")
    robust_crop: bool = option(False, "-rc", "--robust_crop",
                               help="Crop with the 3 mm model instead of the 6 mm one (slower, more robust).")
    body_seg: bool = option(False, "-bs", "--body_seg", help="Crop to the body first (CT only).")
    force_split: bool = option(False, "-fs", "--force_split",
                               help="Process the image in three slabs along z (less memory, lower accuracy).")
    remove_small_blobs: Optional[float] = option(
        None, "-rmb", "--remove_small_blobs", kind="optional", type=float, const=DEFAULT_BLOB_MM3, metavar="mm3",
        help=f"Remove connected components smaller than mm3 (default {DEFAULT_BLOB_MM3:g}).")
    higher_order_resampling: bool = option(
        False, "-ho", "--higher_order_resampling", "--high_order_resampling",
        help="Let nnU-Net resample (higher order) instead of linear resampling to the task spacing.")
    higher_order_resampling_legacy: bool = option(
        False, "--higher_order_resampling_LEGACY", "--high_order_resampling_LEGACY",
        help="The official legacy upsampling of the segmentation: each label's mask linearly (order 1) in its box.")
    resampling_order: int = option(1, "-ro", "--resampling_order", kind="value", type=int, choices=RESAMPLING_ORDERS,
                                   help="Spline order of the input's resampling to the task spacing (default 1).")
    statistics: bool = option(False, "-s", "--statistics", kind="optional", const=True, metavar="filepath",
                              help="Write statistics.json (volume, intensity) beside the output, or to filepath if "
                                   "given.")
    stats_include_incomplete: bool = option(False, "-sii", "--stats_include_incomplete",
                                            help="Also report classes that touch the image border.")
    stats_aggregation: str = option("mean", "-sa", "--stats_aggregation", kind="value",
                                    choices=STATISTIC_AGGREGATIONS,
                                    help="How statistics aggregate intensities (default mean).")
    statistics_extra: bool = option(False, "-sx", "--statistics_extra",
                                    help="Also n_voxels, intensity std/min/max, centroid_vox and bbox_vox per class in "
                                         "statistics.json (not with --fast, as in the official).")
    statistics_normalized_intensities: bool = option(
        False, "--statistics_normalized_intensities",
        help="Statistics of the intensities scaled to 0..1 by the image's minimum and maximum.")
    radiomics: bool = option(False, "-r", "--radiomics",
                             help="Also statistics_radiomics.json: pyradiomics shape and first-order features per "
                                  "class (needs the radiomics extra; class-file output of a NIfTI or NRRD input).")
    device: str = option("gpu", "-d", "--device", kind="value",
                         help="gpu, gpu:N, cpu, mps or auto (default gpu, the CPU if there is none).")
    runtime: str = option("auto", "--runtime", kind="value", choices=RUNTIMES,
                          help="What runs the network on the CPU: auto or torch (labels bit-identical to the "
                               "official tool's), torch_compile (compiled once per process: for totalseg_batch), "
                               "onnxruntime or openvino (faster forward passes, not bit-identical), or nnunet "
                               "(nnU-Net's own predictor). GPUs always use nnU-Net's.")
    download: bool = option(True, "--offline", negated=True,
                            help="Never download weights; fail if they are missing.")
    license_number: Optional[str] = option(None, "-l", "--license_number", kind="value", metavar="key",
                                           help="Licence key for licensed tasks (stored for later runs).")
    model_size: str = option("big", "-ms", "--model_size", kind="value", choices=MODEL_SIZES,
                             help="big (default) or small: task total_v3's smaller models (ResEnc L, 8 GB plans).")
    output_types: tuple[str, ...] = option(
        ("nifti",), "-ot", "--output_type", kind="values", metavar="type",
        help="nifti (default), seg_nrrd (a Slicer .seg.nrrd file with names and colours), or for DICOM input "
             "dicom_seg (DICOM SEG) or dicom_rtstruct (alias dicom; RT Structure Set), -o a .dcm file; stl or obj "
             "(a folder of smoothed surfaces, one per structure, LPS millimetres). Several (-ot nifti dicom_seg or "
             "nifti,dicom_seg) are written side by side.")
    multilabel: bool = option(False, "-ml", "--ml", help="Write one multilabel NIfTI file instead of a folder.")
    save_lowres: bool = option(False, "-sl", "--save_lowres",
                               help="With --fast or --fastest: write the segmentation on the model's grid (3 or 6 mm) "
                                    "instead of the input's.")
    skip_saving: bool = option(False, "-ss", "--skip_saving",
                               help="Write no segmentation (with -s: only the statistics).")
    v1_order: bool = option(False, "-v1o", "--v1_order",
                            help="Task total: label values and table in TotalSegmentator version 1's order.")
    preview: bool = option(False, "-p", "--preview", help="Also write preview_<task>.png beside the output.")
    derived_masks: bool = option(True, "-ndm", "--no_derived_masks", negated=True,
                                 help="Do not write the derived masks (body.nii.gz and skin.nii.gz of task body).")
    overwrite: str = option("outputs", "--overwrite", "--no-overwrite", kind="choice", exclusive=True,
                            by_flag={"--overwrite": "always", "--no-overwrite": "never"},
                            help="--overwrite: replace the output even if it is a file that is no segmentation "
                                 "output; --no-overwrite: refuse to replace an existing output.")

    def __post_init__(self) -> None:
        self._check_values()
        self._check_combinations()

    @classmethod
    def check_value(cls, name: str, value: Any) -> None:
        """Check one field's value on its own (the combinations are checked when a request is made): how a parser
        names the flag of a bad value."""
        probe = object.__new__(cls)
        for item in dataclasses.fields(cls):
            object.__setattr__(probe, item.name, value if item.name == name else item.default)
        probe._check_values()

    def _check_values(self) -> None:
        """Normalise each field (lists to tuples, True to the default blob size) and refuse an unknown value."""
        self._set("roi_subset", _names(self.roi_subset, "roi_subset"))
        self._set("output_types", _output_types(self.output_types))
        self._set("remove_small_blobs", _positive_mm3(self.remove_small_blobs))
        for name, allowed in (("speed", SPEEDS), ("runtime", RUNTIMES), ("stats_aggregation", STATISTIC_AGGREGATIONS),
                              ("model_size", MODEL_SIZES), ("overwrite", OVERWRITE_POLICIES)):
            if getattr(self, name) not in allowed:
                raise InvalidOptionError(f"Unknown {name} {getattr(self, name)!r}; expected one of "
                                         f"{', '.join(allowed)}.")
        if self.resampling_order not in RESAMPLING_ORDERS:
            raise InvalidOptionError(f"resampling_order must be between 0 and 5, got {self.resampling_order!r}.")

    def _check_combinations(self) -> None:
        """Combinations the official refuses before any work (its python_api.py), refused the same way here."""
        if self.model_size == "small" and self.task != SMALL_MODEL_TASK:
            raise InvalidOptionError(f"model_size 'small' is only available for task '{SMALL_MODEL_TASK}', not "
                                     f"'{self.task}'.")
        if self.save_lowres and self.speed == "normal":
            raise InvalidOptionError("save_lowres only works together with fast or fastest mode.")
        if self.save_lowres and any(kind.startswith("dicom") for kind in self.output_types):
            raise InvalidOptionError("save_lowres writes NIfTI or .seg.nrrd outputs only, not DICOM ones.")
        if self.radiomics and self.multilabel:
            raise InvalidOptionError("radiomics needs the class-file output; run without --ml.")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen instance while it is being created

    def __repr__(self) -> str:
        changed = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                            if getattr(self, f.name) != f.default and f.name not in SECRET_FIELDS)
        return f"SegmentationRequest({changed})"

    # ------------------------------------------------------------ conversions

    def to_argv(self) -> list[str]:
        """The command-line flags that give this request back when parsed (defaults are left out)."""
        argv: list[str] = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value != item.default:
                argv += _flag_argv(item.metadata["flag"], value)
        return argv

    def to_json(self, secrets: bool = False) -> dict[str, Any]:
        """Every field under its name, in JSON types (tuples as lists): what a remote client sends.

        The licence key is left out unless ``secrets``: this form is also what records and logs keep.
        """
        return {item.name: _json_value(getattr(self, item.name)) for item in dataclasses.fields(self)
                if secrets or item.name not in SECRET_FIELDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SegmentationRequest:
        """A request from JSON (missing fields take their defaults); unknown fields and wrong types are refused."""
        if not isinstance(data, Mapping):
            raise InvalidOptionError(f"A segmentation request is a JSON object, got {json_type(data)}.")
        hints = typing.get_type_hints(cls)
        known = [item.name for item in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidOptionError(f"Unknown request field(s) {', '.join(unknown)}; known: {', '.join(known)}.")
        return cls(**{name: _from_json_value(name, value, hints[name]) for name, value in data.items()})


def request_fields() -> tuple[dataclasses.Field, ...]:
    """The request's fields, each with its :class:`Flag` in ``metadata["flag"]``."""
    return dataclasses.fields(SegmentationRequest)


def _names(values: Any, what: str) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        raise InvalidOptionError(f"{what} must be a list of class names, not a string.")
    return tuple(str(value) for value in values)


def _output_types(values: Any) -> tuple[str, ...]:
    """Output types in order without repeats; the official ``dicom`` is ``dicom_rtstruct``; a comma list splits."""
    names = [values] if isinstance(values, str) else list(values or ())
    names = [part for name in names for part in str(name).split(",") if part]
    names = ["dicom_rtstruct" if name == "dicom" else name for name in names]
    invalid = [name for name in names if name not in OUTPUT_TYPES]
    if invalid or not names:
        raise InvalidOptionError(f"invalid output type(s) {invalid}; valid: {', '.join(OUTPUT_TYPES)}")
    return tuple(dict.fromkeys(names))


def _flag_argv(flag: Flag, value: Any) -> list[str]:
    if flag.kind == "switch":
        return [flag.long] if bool(value) != flag.negated else []
    if flag.kind == "choice":
        return [flag.name_for(value)]
    if flag.kind == "values":
        return [flag.long, *map(str, value)]
    if flag.kind == "optional" and (value is True or value == flag.const):
        return [flag.long]
    return [flag.long, str(value)]


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _from_json_value(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's type: a string, boolean, number or list of strings, maybe null."""
    members = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else ()
    kind = next((member for member in members if member is not type(None)), hint)
    if value is None and type(None) in members:
        return None
    if _matches(value, kind):
        return tuple(value) if typing.get_origin(kind) is tuple else value
    raise InvalidOptionError(f"Request field {name}: expected {_type_name(kind)}, got {json_type(value)} {value!r}.")


def _matches(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) is tuple:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "a list of strings"
    return {bool: "true or false", str: "a string", float: "a number", int: "a whole number"}[kind]


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    names = {bool: "boolean", str: "string", int: "number", float: "number", list: "array", dict: "object",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)
