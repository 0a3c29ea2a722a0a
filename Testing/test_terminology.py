"""The terminology table (codes, names, colours of every class) and the outputs that carry it.

Checks that every class of every task has a complete, well-formed entry; that the shipped table and Slicer
context are what the generator makes of the sources; that slicer-core's own terminology logic reads the
context and resolves every serialised entry; that classes which touch in the official outputs (6-connected)
or anatomically (left/right, consecutive levels, neighbouring muscles, liver segments, teeth) keep the colour
distance rule; and that a .seg.nrrd of the official ``example_seg.nii.gz`` reads back with the right names,
colours and terminology in slicerio and in Slicer's storage node.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from totalseg_engine import imageio, terminology
from totalseg_engine.core import pipeline
from totalseg_engine.outputs.write import segment_infos, write_result
from totalseg_engine.tasks import all_tasks
from totalseg_engine.terminology import CONTEXT_NAME, MIN_COLOR_DISTANCE, Code, color_distance

ROOT = Path(__file__).resolve().parents[1]
TERM_JSON = ROOT / "TotalSegmentator" / "Resources" / terminology.TERM_JSON_NAME
REFERENCE = ROOT.parent / "shared" / "reference"
OFFICIAL_OUTPUTS = ("example_seg.nii.gz", "example_seg_fast.nii.gz", "example_seg_fast_body_seg.nii.gz",
                    "example_seg_fast_force_split.nii.gz", "example_seg_dicom.nii.gz", "example_seg_mr.nii.gz")
LATERALITY = {Code("SCT", "7771000", "Left"), Code("SCT", "24028007", "Right")}
CODE_VALUE = {"SCT": re.compile(r"^[1-9]\d{5,17}$"), "NEU": re.compile(r"^\d+$")}

# Structures that touch in tasks without official outputs here (anatomical neighbours), as "a/b" pairs.
NEIGHBOURS = {
    "heartchambers_highres": (
        "heart_myocardium/heart_ventricle_left heart_myocardium/heart_ventricle_right "
        "heart_atrium_left/heart_ventricle_left heart_atrium_right/heart_ventricle_right "
        "heart_atrium_left/heart_atrium_right heart_ventricle_left/aorta "
        "heart_ventricle_right/pulmonary_artery aorta/pulmonary_artery"),
    "lung_vessels": (
        "lung_airways/lung_airways_wall lung_arteries/lung_veins lung_airways_wall/lung_arteries"),
    "abdominal_muscles": (
        "rectus_abdominis_left/external_oblique_left external_oblique_left/internal_oblique_left "
        "erector_spinae_left/transversospinalis_left psoas_major_left/quadratus_lumborum_left "
        "quadratus_lumborum_left/erector_spinae_left latissimus_dorsi_left/serratus_anterior_left "
        "pectoralis_major_left/serratus_anterior_left trapezius_left/latissimus_dorsi_left"),
    "head_muscles": (
        "masseter_left/temporalis_left masseter_left/medial_pterygoid_left "
        "lateral_pterygoid_left/medial_pterygoid_left temporalis_left/lateral_pterygoid_left "
        "digastric_left/tongue"),
    "headneck_muscles": (
        "sternocleidomastoid_left/platysma_left anterior_scalene_left/middle_scalene_left "
        "middle_scalene_left/posterior_scalene_left levator_scapulae_left/posterior_scalene_left "
        "superior_pharyngeal_constrictor/middle_pharyngeal_constrictor "
        "middle_pharyngeal_constrictor/inferior_pharyngeal_constrictor sterno_thyroid_left/thyrohyoid_left "
        "trapezius_left/levator_scapulae_left prevertebral_left/anterior_scalene_left"),
    "oculomotor_muscles": (
        "eyeball_left/lateral_rectus_muscle_left eyeball_left/medial_rectus_muscle_left "
        "eyeball_left/superior_rectus_muscle_left eyeball_left/inferior_rectus_muscle_left "
        "superior_rectus_muscle_left/levator_palpebrae_superioris_left "
        "superior_oblique_muscle_left/medial_rectus_muscle_left "
        "inferior_oblique_muscle_left/inferior_rectus_muscle_left eyeball_left/optic_nerve_left"),
    "head_glands_cavities": (
        "eye_left/eye_lens_left nasopharynx/oropharynx oropharynx/hypopharynx soft_palate/hard_palate "
        "nasal_cavity_left/nasopharynx eye_left/optic_nerve_left"),
    "headneck_bones_vessels": (
        "thyroid_cartilage/cricoid_cartilage hyoid/thyroid_cartilage larynx_air/thyroid_cartilage "
        "larynx_air/cricoid_cartilage internal_carotid_artery_left/internal_jugular_vein_left"),
    "craniofacial_structures": (
        "mandible/teeth_lower skull/teeth_upper teeth_lower/teeth_upper skull/sinus_maxillary "
        "skull/sinus_frontal head/skull"),
    "teeth": (
        "lower_jawbone/lower_left_central_incisor_fdi31 upper_jawbone/upper_left_canine_fdi23 "
        "lower_jawbone/left_inferior_alveolar_canal upper_jawbone/left_maxillary_sinus "
        "lower_jawbone/left_mandibular_incisive_canal_fdi103"),
    "ventricle_parts": (
        "ventricle_frontal_horn_left/ventricle_body_left ventricle_body_left/ventricle_trigone_left "
        "ventricle_trigone_left/ventricle_occipital_horn_left "
        "ventricle_trigone_left/ventricle_temporal_horn_left third_ventricle/ventricle_frontal_horn_left"),
    "brain_structures": (
        "caudate_nucleus/internal_capsule lentiform_nucleus/internal_capsule thalamus/internal_capsule "
        "frontal_lobe/parietal_lobe parietal_lobe/occipital_lobe temporal_lobe/occipital_lobe "
        "frontal_lobe/temporal_lobe brainstem/cerebellum ventricle/septum_pellucidum "
        "ventricle/caudate_nucleus ventricle/thalamus insular_cortex/lentiform_nucleus "
        "frontal_lobe/central_sulcus parietal_lobe/central_sulcus subarachnoid_space/venous_sinuses"),
    "vertebrae_body": (
        "vertebrae_body/intervertebral_discs"),
    "tissue_4_types": (
        "subcutaneous_fat/skeletal_muscle torso_fat/skeletal_muscle intermuscular_fat/skeletal_muscle "
        "subcutaneous_fat/torso_fat"),
    "thigh_shoulder_muscles": (
        "quadriceps_femoris_left/sartorius_left quadriceps_femoris_left/thigh_medial_compartment_left "
        "thigh_medial_compartment_left/thigh_posterior_compartment_left "
        "sartorius_left/thigh_medial_compartment_left deltoid/infraspinatus supraspinatus/infraspinatus "
        "infraspinatus/teres_major subscapularis/serratus_anterior coracobrachial/pectoralis_minor "
        "trapezius/supraspinatus deltoid/triceps_brachii subscapularis/teres_major"),
    "appendicular_bones": (
        "tibia/fibula tibia/patella tibia/tarsal fibula/tarsal tarsal/metatarsal metatarsal/phalanges_feet "
        "ulna/radius radius/carpal ulna/carpal carpal/metacarpal metacarpal/phalanges_hand"),
    "aortic_sinuses": (
        "right_coronary_cusp/left_coronary_cusp left_coronary_cusp/non_coronary_cusp "
        "non_coronary_cusp/right_coronary_cusp left_ventricular_outflow_tract/right_coronary_cusp"),
    "aortic_dissection": (
        "aorta_true_lumen/aorta_false_lumen"),
    "trunk_cavities": (
        "pericardium/mediastinum thoracic_cavity/mediastinum abdominal_cavity/thoracic_cavity"),
    "pleural_pericard_effusion": (
        "lung_pleural/pleural_effusion"),
    "liver_vessels": (
        "liver_vessels/liver_tumor"),
    "lung_nodules": (
        "lung/lung_nodules"),
    "body": (
        "body_trunc/body_extremities"),
}


@lru_cache(maxsize=1)
def tasks():
    return all_tasks()


def all_class_names() -> list[str]:
    return list(dict.fromkeys(name for task in tasks().values() for name in task.class_names))


def codes_of(item: terminology.TerminologyEntry) -> list[Code]:
    return [code for code in (item.category, item.type, item.type_modifier, item.region, item.region_modifier)
            if code]


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


def test_every_class_of_every_task_has_one_complete_entry():
    names = all_class_names()
    assert len(names) > 400
    assert sorted(terminology.entries()) == sorted(names)  # one row per distinct class, nothing else
    for name in names:
        item = terminology.entry(name)
        assert item.class_name == name
        assert item.category and item.type, name
        assert item.display_name.strip() == item.display_name and item.display_name, name
        assert all(0 <= channel <= 255 for channel in item.color), name
        assert item.region_modifier is None or item.region is not None, name


def test_unknown_class_is_named_in_the_error():
    with pytest.raises(KeyError, match="lvier"):
        terminology.entry("lvier")


@pytest.mark.parametrize("name", all_class_names())
def test_codes_are_well_formed(name):
    for code in codes_of(terminology.entry(name)):
        assert code.scheme in CODE_VALUE, code
        assert CODE_VALUE[code.scheme].match(code.value), code
        assert code.meaning and code.meaning == code.meaning.strip(), code
        assert not set("^~|\n\r") & set(code.scheme + code.value + code.meaning), code


def test_same_code_value_has_one_meaning_and_laterality_is_a_modifier():
    meanings: dict[tuple[str, str], set[str]] = {}
    for item in terminology.entries().values():
        for code in codes_of(item):
            meanings.setdefault((code.scheme, code.value), set()).add(code.meaning)
        for modifier in (item.type_modifier, item.region_modifier):
            assert modifier is None or modifier in LATERALITY, (item.class_name, modifier)
    assert {key: found for key, found in meanings.items() if len(found) > 1} == {}


@pytest.mark.parametrize("task", list(all_tasks()))
def test_display_names_and_codes_are_unique_within_a_task(task):
    items = [terminology.entry(name) for name in tasks()[task].class_names]
    names = [item.display_name for item in items]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)
    coded = [tuple(codes_of(item)) for item in items]
    assert len(set(coded)) == len(coded), "two classes of one task share all their codes"


def test_examples_from_the_issue():
    t7 = terminology.entry("vertebrae_T7")
    assert (t7.display_name, t7.type) == ("T7 vertebra", Code("SCT", "62487009", "T7 vertebra"))  # Slicer's name
    lobe = terminology.entry("lung_upper_lobe_left")
    assert lobe.display_name == "superior lobe of left lung"
    assert (lobe.type.value, lobe.type_modifier.meaning) == ("45653009", "Left")
    assert lobe.ta2_name == "superior lobe of left lung"
    assert terminology.entry("adrenal_gland_right").ta2_name == "suprarenal gland"
    tooth = terminology.entry("lower_left_canine_fdi33")
    assert (tooth.display_name, tooth.type.value) == ("Lower left canine (FDI 33)", "860782001")
    assert tooth.type_modifier is None  # the tooth code says upper/lower and left/right
    pulp = terminology.entry("upper_right_canine_pulp_fdi113")
    assert (pulp.type.meaning, pulp.region.value) == ("Dental pulp", "860767006")
    assert terminology.entry("liver_segment_4").display_name == "Liver segment IV"


def test_ta2_names_follow_the_readme_for_total_and_total_mr():
    for name in set(tasks()["total"].class_names) | set(tasks()["total_mr"].class_names):
        item = terminology.entry(name)
        assert bool(item.ta2_name) == (item.category.meaning == "Anatomical Structure"), name
    assert terminology.entry("portal_vein_and_splenic_vein").ta2_name == "hepatic portal vein"
    assert terminology.entry("iliac_vena_left").ta2_name == "common iliac vein"
    assert terminology.entry("liver_tumor").ta2_name == ""  # no standard anatomical name


def test_shipped_table_and_context_are_what_the_generator_makes():
    if not REFERENCE.is_dir():
        pytest.skip(f"source folder {REFERENCE} is missing")
    sys.path.insert(0, str(ROOT / "tools"))
    import build_terminology

    shipped = (ROOT / "TotalSegmentator" / "totalseg_engine" / "data" / "terminology.csv").read_text(encoding="utf-8")
    assert build_terminology.table_text() == shipped, "run python tools/build_terminology.py"
    assert TERM_JSON.read_text(encoding="utf-8") == terminology.term_json_text(), "run tools/build_terminology.py"


def test_context_lists_every_type_once_with_its_modifiers():
    context = terminology.term_context()
    assert context["SegmentationCategoryTypeContextName"] == CONTEXT_NAME
    types = [(c["CodeValue"], t["CodeValue"]) for c in context["SegmentationCodes"]["Category"] for t in c["Type"]]
    assert len(types) == len(set(types))
    types_by_value = {t["CodeValue"]: t for c in context["SegmentationCodes"]["Category"] for t in c["Type"]}
    kidney = types_by_value["64033007"]
    assert sorted(m["CodeMeaning"] for m in kidney["Modifier"]) == ["Left", "Right"]


# --------------------------------------------------------------------------------------------------
# Slicer: serialised entries and the context, read by slicer-core's terminology logic
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slicer_logic():
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    if not hasattr(slicer, "vtkSlicerTerminologiesModuleLogic"):
        pytest.skip("the installed 'slicer' package has no terminology logic (install slicer-core)")
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert logic.LoadTerminologyFromFile(str(TERM_JSON)) == CONTEXT_NAME
    return slicer, logic


def _code(obj) -> Code:
    return Code(obj.GetCodingSchemeDesignator() or "", obj.GetCodeValue() or "", obj.GetCodeMeaning() or "")


def category_types(slicer, logic, context: str):
    """Every (category, type) of a loaded terminology context, as slicer-core's logic parsed it."""
    for i in range(logic.GetNumberOfCategoriesInTerminology(context)):
        category = slicer.vtkSlicerTerminologyCategory()
        logic.GetNthCategoryInTerminology(context, i, category)
        for j in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            type_ = slicer.vtkSlicerTerminologyType()
            logic.GetNthTypeInTerminologyCategory(context, category, j, type_)
            yield category, type_


def loaded_context(slicer, logic) -> dict[tuple[Code, Code, Code | None], tuple]:
    """(category, type, modifier) -> (Slicer label, recommended colour) as the logic parsed the shipped file."""
    found = {}
    for category, type_ in category_types(slicer, logic, CONTEXT_NAME):
        found[(_code(category), _code(type_), None)] = (type_.GetSlicerLabel(), type_.GetRecommendedDisplayRGBValue())
        for k in range(logic.GetNumberOfTypeModifiersInTerminologyType(CONTEXT_NAME, category, type_)):
            modifier = slicer.vtkSlicerTerminologyType()
            logic.GetNthTypeModifierInTerminologyType(CONTEXT_NAME, category, type_, k, modifier)
            found[(_code(category), _code(type_), _code(modifier))] = (
                modifier.GetSlicerLabel(), modifier.GetRecommendedDisplayRGBValue())
    return found


def test_every_entry_string_round_trips_and_resolves_in_the_loaded_context(slicer_logic):
    slicer, logic = slicer_logic
    context = loaded_context(slicer, logic)
    owners: dict[tuple, str] = {}
    for item in terminology.entries().values():
        text = terminology.slicer_terminology_string(item)
        parsed = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(text, parsed), text
        assert logic.SerializeTerminologyEntry(parsed) == text
        assert parsed.GetTerminologyContextName() == CONTEXT_NAME
        modifier = _code(parsed.GetTypeModifierObject()) if item.type_modifier else None
        key = (_code(parsed.GetCategoryObject()), _code(parsed.GetTypeObject()), modifier)
        assert key == (item.category, item.type, item.type_modifier), item.class_name
        assert key in context, f"{item.class_name}: {key} not in the loaded context"
        assert (_code(parsed.GetRegionObject()) if item.region else None) == item.region
        owners.setdefault(key, item.class_name)
    for key, owner in owners.items():  # the context's label and colour are those of the first class coded so
        assert context[key] == (terminology.entry(owner).display_name, terminology.entry(owner).color)


def test_segment_info_gives_name_colour_and_tag():
    name, color, tag = terminology.segment_info("vertebrae_T7")
    assert name == "T7 vertebra" and tag.startswith(CONTEXT_NAME + "~SCT^123037004^")
    assert color == tuple(c / 255 for c in terminology.entry("vertebrae_T7").color)
    assert terminology.segment_info("vertebrae_T7", use_standard_names=False)[0] == "vertebrae_T7"


# --------------------------------------------------------------------------------------------------
# Display names: Slicer's wording where the existing Slicer extension names the class (issue #13)
# --------------------------------------------------------------------------------------------------

EXTENSION_REFERENCE = REFERENCE / "slicer-extension-terminology"
EXTENSION_CONTEXT = "Segmentation category and type - Total Segmentator"
DICOM_MASTER = "Segmentation category and type - DICOM master list"
DICOM_MASTER_ENV = "SLICER_DICOM_MASTER_TERM_JSON"  # Slicer's SegmentationCategoryTypeModifier-DICOM-Master


@pytest.fixture(scope="module")
def generator():
    if not EXTENSION_REFERENCE.is_dir():
        pytest.skip(f"source folder {EXTENSION_REFERENCE} is missing")
    sys.path.insert(0, str(ROOT / "tools"))
    import build_terminology

    return build_terminology


def excerpt_as_context_file(generator, folder: Path) -> Path:
    """The generator's excerpt of Slicer's DICOM master list, written as a context file."""
    import json

    categories: dict[str, dict] = {}
    for (category, type_), (meaning, label, modifiers) in generator.DICOM_MASTER_TYPES.items():
        scheme, value = category.split("^")
        entry = categories.setdefault(category, {"CodingSchemeDesignator": scheme, "CodeValue": value,
                                                 "CodeMeaning": value, "Type": []})
        scheme, value = type_.split("^")
        item = {"CodingSchemeDesignator": scheme, "CodeValue": value, "CodeMeaning": meaning}
        item.update({"3dSlicerLabel": label} if label else {})
        item.update({"Modifier": [{"CodingSchemeDesignator": m.split("^")[0], "CodeValue": m.split("^")[1],
                                   "CodeMeaning": m_meaning, **({"3dSlicerLabel": m_label} if m_label else {})}
                                  for m, (m_meaning, m_label) in modifiers.items()]} if modifiers else {})
        entry["Type"].append(item)
    path = folder / "DICOM-Master-excerpt.term.json"
    schema = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#"
    path.write_text(json.dumps({"SegmentationCategoryTypeContextName": DICOM_MASTER, "@schema": schema,
                                "SegmentationCodes": {"Category": list(categories.values())}}), encoding="utf-8")
    return path


def extension_segment_names(slicer, dicom_master: Path) -> dict[str, str | None]:
    """Class -> segment name the existing Slicer extension shows (None: no label, it keeps the class name).

    Its ``loadTotalSegmentatorLabelTerminology`` (entry string from the mapping CSV; its own context where that
    lists the type, else the DICOM master list) and ``getSegmentLabelColor``, run on slicer-core's logic.
    """
    import csv

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    own = EXTENSION_REFERENCE / "SegmentationCategoryTypeModifier-TotalSegmentator.term.json"
    assert logic.LoadTerminologyFromFile(str(own)) == EXTENSION_CONTEXT
    assert logic.LoadTerminologyFromFile(str(dicom_master)) == DICOM_MASTER
    own_types = {f"{type_.GetCodingSchemeDesignator()}^{type_.GetCodeValue()}"
                 for _, type_ in category_types(slicer, logic, EXTENSION_CONTEXT)}

    def label(type_, modifier=None) -> str:
        type_label = type_.GetSlicerLabel() or type_.GetCodeMeaning()
        if modifier is None:
            return type_label
        return modifier.GetSlicerLabel() or f"{type_label} {modifier.GetCodeMeaning()}"

    def segment_name(text: str) -> str | None:
        wanted = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(text, wanted), text
        context, category, type_ = (wanted.GetTerminologyContextName(), wanted.GetCategoryObject(),
                                    wanted.GetTypeObject())
        found = slicer.vtkSlicerTerminologyEntry()
        for i in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            logic.GetNthTypeInTerminologyCategory(context, category, i, found.GetTypeObject())
            if (_code(found.GetTypeObject()).scheme, _code(found.GetTypeObject()).value) != (
                    _code(type_).scheme, _code(type_).value):
                continue
            modifier = wanted.GetTypeModifierObject()
            if not (modifier and modifier.GetCodeValue()):
                return label(found.GetTypeObject())
            for k in range(logic.GetNumberOfTypeModifiersInTerminologyType(context, category, type_)):
                logic.GetNthTypeModifierInTerminologyType(context, category, type_, k, found.GetTypeModifierObject())
                if (_code(found.GetTypeModifierObject()).scheme, _code(found.GetTypeModifierObject()).value) == (
                        _code(modifier).scheme, _code(modifier).value):
                    return label(found.GetTypeObject(), found.GetTypeModifierObject())
        return None  # the extension raises, logs it and keeps the class name

    names = {}
    with open(EXTENSION_REFERENCE / "slicer_totalsegmentator_snomed_mapping.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            codes = ["^".join(row.get(f"{field}_{part}") or "" for part in ("CodingScheme", "CodeValue", "CodeMeaning"))
                     for field in ("Category", "Type", "TypeModifier", "Region", "RegionModifier")]
            type_key = f"{row['Type_CodingScheme']}^{row['Type_CodeValue']}"
            context = EXTENSION_CONTEXT if type_key in own_types else DICOM_MASTER
            text = (f"{context}~{codes[0]}~{codes[1]}~{codes[2]}~Anatomic codes - DICOM master list"
                    f"~{codes[3]}~{codes[4]}|")
            names[row["Name"]] = segment_name(text)
    return names


@pytest.mark.parametrize("source", ["excerpt", "slicer"])
def test_display_name_is_the_slicer_extensions_segment_name(generator, tmp_path, source):
    """Every class the extension names gets that name exactly, unless it would repeat a name within a task."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    if not hasattr(slicer, "vtkSlicerTerminologiesModuleLogic"):
        pytest.skip("the installed 'slicer' package has no terminology logic (install slicer-core)")
    if source == "excerpt":
        dicom_master = excerpt_as_context_file(generator, tmp_path)
    elif os.environ.get(DICOM_MASTER_ENV):
        dicom_master = Path(os.environ[DICOM_MASTER_ENV])  # Slicer's own file: checks the excerpt too
    else:
        pytest.skip(f"set {DICOM_MASTER_ENV} to Slicer's SegmentationCategoryTypeModifier-DICOM-Master.term.json")
    shown = extension_segment_names(slicer, dicom_master)
    ours = set(all_class_names())
    named = {name: label for name, label in shown.items() if name in ours and label}
    assert len(named) > 280
    assert named == {name: label for name, label in generator.slicer_names().items() if name in ours}
    kept = {}
    for name, label in named.items():
        if terminology.entry(name).display_name == label:
            continue
        kept[name] = label
        rivals = {other for task in tasks().values() if name in task.class_names
                  for other in task.class_names if other != name
                  and label in (named.get(other), terminology.entry(other).display_name)}
        assert rivals, f"{name}: '{terminology.entry(name).display_name}' but Slicer shows '{label}'"
    assert len(kept) < 80  # teeth, pulps, canals, parotid glands, kidney cysts
    assert {name: label for name, label in named.items() if name.startswith("vertebrae_T")} == {
        f"vertebrae_T{i}": f"T{i} vertebra" for i in range(1, 13)}
    assert terminology.entry("kidney_left").display_name == "left kidney"
    assert terminology.entry("submandibular_gland_right").display_name == "Submandibular gland Right"  # as shown


def test_classes_the_extension_does_not_name_keep_our_names(generator):
    sources = [generator.read_source(path) for path in generator.SOURCES]
    named = generator.slicer_names()
    for name in all_class_names():
        if name not in named:
            expected = generator.display_name(name, generator.class_codes(name, sources))
            assert terminology.entry(name).display_name == expected, name
    examples = {"vertebrae_L6": "Vertebra L6", "liver_segment_4": "Liver segment IV", "celiac_trunk": "Celiac trunk",
                "ventricle_temporal_horn_left": "Left temporal horn of lateral ventricle",  # not in DICOM master
                "lower_left_canine_fdi33": "Lower left canine (FDI 33)",  # Slicer: "left canine tooth", twice
                "kidney_cyst_left": "Left kidney cyst", "brainstem": "Brainstem"}
    assert {name: terminology.entry(name).display_name for name in examples} == examples


# --------------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------------


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Label pairs that share a face somewhere (6-connectivity)."""
    found: set[tuple[int, int]] = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        first, second = a[:-1], a[1:]
        differ = (first != second) & (first > 0) & (second > 0)
        pairs = np.stack([np.minimum(first[differ], second[differ]), np.maximum(first[differ], second[differ])], 1)
        found |= {(int(x), int(y)) for x, y in np.unique(pairs, axis=0)}
    return found


def too_close(pairs) -> list[tuple[str, str, float]]:
    distances = [(a, b, color_distance(terminology.entry(a).color, terminology.entry(b).color)) for a, b in pairs]
    return [(a, b, round(d, 1)) for a, b, d in distances if d < MIN_COLOR_DISTANCE]


def test_color_distance_is_cie76():
    assert color_distance((255, 255, 255), (0, 0, 0)) == pytest.approx(100.0, abs=1e-3)
    assert color_distance((255, 0, 0), (255, 0, 0)) == 0
    assert terminology.rgb_to_lab((255, 0, 0)) == pytest.approx((53.24, 80.09, 67.20), abs=0.01)


@pytest.mark.parametrize("output", OFFICIAL_OUTPUTS)
def test_classes_touching_in_official_outputs_differ_clearly(data_dir, output):
    img = nib.load(data_dir / output)
    label_map = imageio.read_label_map(img)
    pairs = touching_pairs(np.asanyarray(img.dataobj).astype(np.int32))
    assert len(pairs) > 10
    assert too_close((label_map[a], label_map[b]) for a, b in pairs) == []


def counterpart(name: str) -> str | None:
    for side, other in (("left", "right"), ("right", "left")):
        swapped = re.sub(rf"(^|_){side}(_|$)", rf"\g<1>{other}\g<2>", name, count=1)
        if swapped != name:
            return swapped
    return None


def anatomical_neighbours(task) -> set[tuple[str, str]]:
    """Left/right counterparts, consecutive members of a numbered series, all liver segments, adjacent teeth."""
    names = task.class_names
    pairs = {tuple(sorted((n, counterpart(n)))) for n in names if counterpart(n) in names}
    pairs |= {(a, b) for a, b in zip(names, names[1:]) if re.sub(r"\d+", "#", a) == re.sub(r"\d+", "#", b)}
    pairs |= set(itertools.combinations([n for n in names if n.startswith("liver_segment_")], 2))
    teeth = {int(m[1]): n for n in names if (m := re.match(r"^(?!.*pulp).*_fdi([1-4][1-8])$", n))}
    pairs |= {(teeth[t], teeth[t + 1]) for t in teeth if t + 1 in teeth}
    pairs |= {(teeth[a], teeth[b]) for a, b in ((11, 21), (31, 41), (11, 41), (21, 31)) if a in teeth and b in teeth}
    pairs |= {(n, teeth[int(m[1]) - 100]) for n in names if (m := re.match(r"^.*_pulp_fdi(\d+)$", n))}
    return pairs | {tuple(pair.split("/")) for pair in NEIGHBOURS.get(task.name, "").split()}


def test_neighbour_lists_name_classes_of_their_task():
    for task, pairs in NEIGHBOURS.items():
        named = {name for pair in pairs.split() for name in pair.split("/")}
        assert named <= set(tasks()[task].class_names), (task, named - set(tasks()[task].class_names))


@pytest.mark.parametrize("task", list(all_tasks()))
def test_anatomical_neighbours_differ_clearly(task):
    assert too_close(anatomical_neighbours(tasks()[task])) == []


# --------------------------------------------------------------------------------------------------
# .seg.nrrd of the official example segmentation
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_seg_nrrd(tmp_path_factory):
    """The CLI's .seg.nrrd writer run on the official example_seg.nii.gz (41 classes present)."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator-tests" / "example_seg.nii.gz"
    if not data.exists():
        pytest.skip(f"{data} is missing")
    img = nib.load(data)
    result = pipeline.Result(image=img, label_map=imageio.read_label_map(img))
    path = tmp_path_factory.mktemp("seg") / "example.seg.nrrd"
    write_result(result, path, ml=False, output_type="seg_nrrd", overwrite=False)
    present = sorted(int(v) for v in np.unique(np.asanyarray(img.dataobj)) if v)
    return path, {label: result.label_map[label] for label in present}


def test_seg_nrrd_reads_back_in_slicerio(example_seg_nrrd):
    slicerio = pytest.importorskip("slicerio")
    from slicerio.segmentation import terminology_entry_from_string

    path, present = example_seg_nrrd
    assert len(present) == 41
    segments = slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]
    assert [s["labelValue"] for s in segments] == list(present)
    for segment, name in zip(segments, present.values()):
        item = terminology.entry(name)
        assert segment["name"] == item.display_name
        np.testing.assert_allclose(segment["color"], item.color_float, atol=1e-6)
        expected = terminology_entry_from_string(terminology.slicer_terminology_string(item))
        assert segment["terminology"] == expected
        assert segment["terminology"]["type"] == [item.type.scheme, item.type.value, item.type.meaning]


def test_seg_nrrd_reads_back_in_slicer(example_seg_nrrd):
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLSegmentationStorageNode"):
        pytest.skip("the installed 'slicer' package has no MRML (install slicer-core)")
    path, present = example_seg_nrrd
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 41
    for index, (label, name) in enumerate(present.items()):
        segment = segmentation.GetNthSegment(index)
        item = terminology.entry(name)
        assert (segment.GetName(), segment.GetLabelValue()) == (item.display_name, label)
        np.testing.assert_allclose(segment.GetColor(), item.color_float, atol=1e-6)
        assert terminology_tag(segment) == terminology.slicer_terminology_string(item)


def terminology_tag(segment) -> str:
    import vtk

    value = vtk.reference("")
    assert segment.GetTag("TerminologyEntry", value)
    return str(value)


def test_seg_nrrd_can_keep_class_names():
    infos = segment_infos({5: "liver", 37: "vertebrae_T7"}, use_standard_names=False)
    assert [(i.label, i.name) for i in infos] == [(5, "liver"), (37, "vertebrae_T7")]
    assert infos[1].terminology == terminology.slicer_terminology_string(terminology.entry("vertebrae_T7"))


# --------------------------------------------------------------------------------------------------
# DICOM SEG of the official segmentation of the DICOM test series
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_seg_case(tmp_path_factory):
    """The official example_seg_dicom.nii.gz (LAS grid) written as a SEG over example_ct_dicom."""
    hd = pytest.importorskip("highdicom")
    from totalseg_engine.outputs import dicom as dicom_output

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator-tests"
    if not (folder / "example_ct_dicom").is_dir():
        pytest.skip(f"{folder} is missing")
    official = nib.load(folder / "example_seg_dicom.nii.gz")
    label_map = imageio.read_label_map(official)
    path = dicom_output.write_dicom_seg(official, label_map, folder / "example_ct_dicom",
                                       tmp_path_factory.mktemp("dcm") / "seg.dcm")
    source = imageio.read_image(folder / "example_ct_dicom")
    expected = np.asanyarray(imageio.reorient_to_grid(official, source).dataobj)
    return hd.seg.segread(path), label_map, expected, folder / "example_ct_dicom"


def test_dicom_seg_has_one_coded_segment_per_class_present(dicom_seg_case):
    import highdicom as hd

    seg, label_map, expected, _ = dicom_seg_case
    present = sorted(int(v) for v in np.unique(expected) if v)
    assert len(present) == 31 and seg.get_segment_numbers() == list(range(1, len(present) + 1))
    for number, label in enumerate(present, start=1):
        item = terminology.entry(label_map[label])
        description = seg.get_segment_description(number)
        assert description.segment_label == item.display_name
        assert description.segmented_property_category.value == item.category.value
        found = description.SegmentedPropertyTypeCodeSequence[0]
        assert (found.CodingSchemeDesignator, found.CodeValue, found.CodeMeaning) == (
            item.type.scheme, item.type.value, item.type.meaning)
        modifiers = getattr(found, "SegmentedPropertyTypeModifierCodeSequence", [])
        assert [m.CodeValue for m in modifiers] == ([item.type_modifier.value] if item.type_modifier else [])
        regions = [(r.CodeValue, [m.CodeValue for m in getattr(r, "AnatomicRegionModifierSequence", [])])
                   for r in getattr(description, "AnatomicRegionSequence", [])]
        assert regions == ([(item.region.value, [item.region_modifier.value] if item.region_modifier else [])]
                           if item.region else [])
        encoded = hd.color.CIELabColor(*terminology.rgb_to_lab(item.color)).value  # DICOM's 16-bit CIELab
        assert list(description.RecommendedDisplayCIELabValue) == list(encoded)


def test_dicom_seg_frames_are_the_source_images_with_the_official_labels(dicom_seg_case):
    import pydicom

    seg, label_map, expected, folder = dicom_seg_case
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    sources = {d.file_meta.MediaStorageSOPInstanceUID: d for d in datasets}  # the test series is anonymised
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == set(sources)
    present = sorted(int(v) for v in np.unique(expected) if v)
    to_label = np.array([0] + present)
    order = sorted(sources, key=lambda uid: float(sources[uid].ImagePositionPatient[2]))
    pixels = seg.get_pixels_by_source_instance(order, combine_segments=True)
    affine = imageio.read_image(folder).affine  # the engine's grid of the series: z of slice k
    grid_z = affine[2, 3] + affine[2, 2] * np.arange(len(order))
    np.testing.assert_allclose(sorted(float(sources[uid].ImagePositionPatient[2]) for uid in order), sorted(grid_z),
                               atol=1e-3)
    for frame, uid in zip(pixels, order):
        k = int(np.argmin(np.abs(grid_z - float(sources[uid].ImagePositionPatient[2]))))
        np.testing.assert_array_equal(to_label[frame], expected[:, :, k].T)
