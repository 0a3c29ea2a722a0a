"""Build ``totalseg_engine/data/terminology.csv`` and the Slicer terminology context from the sources.

Run from the repository root: ``python tools/build_terminology.py`` (``--check`` only compares).

Sources (beside the checkout, in ``../shared/reference``):

* ``totalsegmentator_snomed_mapping.csv``: TotalSegmentator's own SNOMED CT mapping (170 rows), preferred;
* ``slicer-extension-terminology/slicer_totalsegmentator_snomed_mapping.csv``: the existing Slicer extension's
  mapping (413 rows), for the classes the first one lacks;
* TA2 names of ``total`` and ``total_mr`` from TotalSegmentator's README (``TA2_SEED`` below).

Where the sources are wrong, missing or ambiguous the hand tables below decide; every decision is listed with
its reason in ``totalseg_engine/data/TERMINOLOGY.md``. Codes were checked against DICOM PS3.16 context groups
and Slicer's DICOM master lists. TA2 names and colours are hand tables too; colours start from Slicer's
GenericAnatomy colours and are spread where structures touch (rule in ``terminology.py``).

Display names (issue #13): segment IDs stay the class names; the display name is the name the existing Slicer
extension (lassoan/SlicerTotalSegmentator) shows for the class with "use standard segment names", exactly as it
shows it (case included: "T7 vertebra", "left kidney", "Submandibular gland Right"), wherever its mapping has
the class and its terminology gives it a label (``slicer_names``: its context file beside its mapping, else
Slicer's DICOM master list, ``DICOM_MASTER_TYPES``). Otherwise, and where Slicer's name would be shared by two
classes of one task (teeth, pulps, parotid glands, kidney cysts), our own name (``display_name``).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "TotalSegmentator"))

from totalseg_engine import terminology  # noqa: E402
from totalseg_engine.tasks import all_tasks  # noqa: E402
from totalseg_engine.terminology import CODE_FIELDS, CSV_COLUMNS, Code  # noqa: E402

REFERENCE = ROOT.parent / "shared" / "reference"
SOURCES = (
    REFERENCE / "totalsegmentator_snomed_mapping.csv",
    REFERENCE / "slicer-extension-terminology" / "slicer_totalsegmentator_snomed_mapping.csv",
)
TABLE = ROOT / "TotalSegmentator" / "totalseg_engine" / "data" / "terminology.csv"
TERM_JSON = ROOT / "TotalSegmentator" / "Resources" / terminology.TERM_JSON_NAME

Codes = dict[str, Optional[Code]]
RGB = tuple[int, int, int]


def sct(value: str, meaning: str) -> Code:
    return Code("SCT", value, meaning)


ANATOMY = sct("123037004", "Anatomical Structure")
TISSUE = sct("85756007", "Tissue")
ALTERED = sct("49755003", "Morphologically Altered Structure")
OBJECT = sct("260787004", "Physical object")
SUBSTANCE = sct("91720002", "Body Substance")
SPATIAL = sct("309825002", "Spatial and Relational Concept")
LEFT = sct("7771000", "Left")
RIGHT = sct("24028007", "Right")
SIDES = {"left": LEFT, "right": RIGHT}


def codes(category: Code, type_: Code, modifier: Optional[Code] = None, region: Optional[Code] = None,
          region_modifier: Optional[Code] = None) -> Codes:
    return dict(zip(CODE_FIELDS, (category, type_, modifier, region, region_modifier)))


# --------------------------------------------------------------------------------------------------
# Codes: the sources, then the hand decisions (reasons in TERMINOLOGY.md)
# --------------------------------------------------------------------------------------------------

# Meanings normalised to the DICOM PS3.16 wording (typos and variants in the sources); values are unchanged.
MEANINGS = {
    "75297007": "Gluteus minimus muscle",
    "87878005": "Left ventricle",
    "53085002": "Right ventricle",
    "12691009": "Brachiocephalic trunk",
    "30315005": "Small intestine",
    "3120008": "Pleura",
    "71133005": "Couinaud hepatic segment I",
    "38199008": "Tooth",
    "50016007": "Costal cartilage",
}

AORTA = sct("15825003", "Aorta")
PULMONARY_TRUNK = sct("45341000", "Pulmonary trunk")
AORTIC_VALVE_RING = sct("77583004", "Aortic valve ring")
INFERIOR_ALVEOLAR_NERVE = sct("55636003", "Inferior alveolar nerve")
MANDIBLE = sct("91609006", "Mandible")
MAXILLA = sct("70925003", "Maxilla")
TOOTH = sct("38199008", "Tooth")
PHALANX = sct("28641004", "Phalanx structure")


def _lateral(type_: Code) -> dict[str, Codes]:
    """Left and right classes ``<base>_left`` / ``<base>_right`` coded as one type with a laterality modifier."""
    return {side: codes(ANATOMY, type_, modifier) for side, modifier in SIDES.items()}


def _paired(base: str, type_: Code) -> dict[str, Codes]:
    return {f"{base}_{side}": value for side, value in _lateral(type_).items()}


CODE_DECISIONS: dict[str, Codes] = {
    # missing from both sources
    "vertebrae_L6": codes(ANATOMY, sct("51282000", "Vertebra"), region=sct("122496007", "Lumbar spine")),
    "celiac_trunk": codes(ANATOMY, sct("57850000", "Celiac axis")),
    "superior_mesenteric_artery": codes(ANATOMY, sct("42258001", "Superior mesenteric artery")),
    "renal_arteries": codes(ANATOMY, sct("2841007", "Renal artery")),
    "aorta_true_lumen": codes(ANATOMY, sct("91747007", "Lumen of blood vessel"), region=AORTA),
    "aorta_false_lumen": codes(ALTERED, sct("122459003", "Dissection"), region=AORTA),
    "annulus_proper": codes(ANATOMY, AORTIC_VALVE_RING),
    "annulus": codes(ANATOMY, AORTIC_VALVE_RING),
    "sinotubular_junction": codes(ANATOMY, sct("443167003", "Aortic sinotubular junction")),
    "pul_annulus": codes(ANATOMY, sct("90318009", "Pulmonic ring")),
    "pul_sinotubular_junction": codes(ANATOMY, PULMONARY_TRUNK),
    "pul_bifurcation": codes(SPATIAL, sct("371894001", "Bifurcation"), region=PULMONARY_TRUNK),
    "pul_left_start": codes(ANATOMY, sct("50408007", "Left pulmonary artery")),
    "pul_right_start": codes(ANATOMY, sct("78480002", "Right pulmonary artery")),
    "lung_pleural": codes(ANATOMY, sct("3120008", "Pleura")),
    "phalanges_feet": codes(ANATOMY, PHALANX, region=sct("56459004", "Foot")),
    "phalanges_hand": codes(ANATOMY, PHALANX, region=sct("85562004", "Hand")),
    # wrong or unverifiable codes in the sources
    **_paired("subclavian_artery", sct("36765005", "Subclavian artery")),
    "atrial_appendage_left": codes(ANATOMY, sct("33626005", "Left auricular appendage")),
    **_paired("pectoralis_major", sct("60005003", "Pectoralis major muscle")),
    **_paired("latissimus_dorsi", sct("15665001", "Latissimus dorsi muscle")),
    **_paired("psoas_major", sct("68455001", "Iliopsoas muscle")),
    "upper_jawbone": codes(ANATOMY, MAXILLA),
    "teeth_upper": codes(ANATOMY, TOOTH, region=MAXILLA),
    "teeth_lower": codes(ANATOMY, TOOTH, region=MANDIBLE),
    "bridge": codes(OBJECT, sct("27606000", "Dental prosthesis")),
    "implant": codes(OBJECT, sct("40388003", "Implant"), region=sct("661005", "Jaw region")),
    "larynx_air": codes(SUBSTANCE, sct("74947009", "Gas"), region=sct("4596009", "Larynx")),
    # laterality as a modifier, like every other paired structure (and verified codes)
    **_paired("eye", sct("81745001", "Eye")),
    **_paired("eye_lens", sct("78076003", "Lens")),
    **_paired("auditory_canal", sct("84301002", "External auditory canal")),
    **_paired("parotid_gland", sct("45289007", "Parotid gland")),
    **_paired("quadriceps_femoris", sct("21989003", "Quadriceps femoris muscle")),
    "intermuscular_fat": codes(TISSUE, sct("55603005", "Fat"), region=sct("71616004", "Muscle")),
    **{f"{side}_inferior_alveolar_canal": value for side, value in _lateral(INFERIOR_ALVEOLAR_NERVE).items()},
}

# FDI tooth number -> DICOM PS3.16 CID 4018 (permanent dentition) code; quadrants 1-4, positions 1-8.
TEETH = {
    11: ("422653006", "Permanent maxillary right central incisor tooth"),
    12: ("424877001", "Permanent maxillary right lateral incisor tooth"),
    13: ("860767006", "Permanent maxillary right canine tooth"),
    14: ("57826002", "Permanent maxillary right first premolar tooth"),
    15: ("36492000", "Permanent maxillary right second premolar tooth"),
    16: ("865995000", "Permanent maxillary right first molar tooth"),
    17: ("863902006", "Permanent maxillary right second molar tooth"),
    18: ("68085002", "Permanent maxillary right third molar tooth"),
    21: ("424399000", "Permanent maxillary left central incisor tooth"),
    22: ("423185002", "Permanent maxillary left lateral incisor tooth"),
    23: ("860780009", "Permanent maxillary left canine tooth"),
    24: ("61897005", "Permanent maxillary left first premolar tooth"),
    25: ("23226009", "Permanent maxillary left second premolar tooth"),
    26: ("865988009", "Permanent maxillary left first molar tooth"),
    27: ("863901004", "Permanent maxillary left second molar tooth"),
    28: ("87704003", "Permanent maxillary left third molar tooth"),
    31: ("425106001", "Mandibular left central incisor tooth"),
    32: ("423331005", "Mandibular left lateral incisor tooth"),  # PS3.16 prints "lateral tooth", a slip
    33: ("860782001", "Mandibular left canine tooth"),
    34: ("2400006", "Mandibular left first premolar tooth"),
    35: ("24573005", "Mandibular left second premolar tooth"),
    36: ("866006002", "Mandibular left first molar tooth"),
    37: ("863898000", "Mandibular left second molar tooth"),
    38: ("74344005", "Mandibular left third molar tooth"),
    41: ("424575004", "Mandibular right central incisor tooth"),
    42: ("423937004", "Mandibular right lateral incisor tooth"),
    43: ("860785004", "Mandibular right canine tooth"),
    44: ("80140008", "Mandibular right first premolar tooth"),
    45: ("8873007", "Mandibular right second premolar tooth"),
    46: ("866005003", "Mandibular right first molar tooth"),
    47: ("863899008", "Mandibular right second molar tooth"),
    48: ("38994002", "Mandibular right third molar tooth"),
}
DENTAL_PULP = sct("26671002", "Dental pulp")
CENTRAL_INCISOR_REGION = sct("699453001", "Central incisor region")
FDI_CLASS = re.compile(r"^(?P<jaw>upper|lower)_(?P<side>left|right)_(?P<tooth>[a-z_]+?)(?P<pulp>_pulp)?_fdi(?P<n>\d+)$")


def tooth_codes(class_name: str) -> Optional[Codes]:
    """Teeth and pulps by FDI number; the mandibular incisive canals (FDI 103/104) by side and region."""
    match = FDI_CLASS.match(class_name)
    if match:
        number = int(match["n"]) % 100
        tooth = sct(*TEETH[number])
        return codes(ANATOMY, DENTAL_PULP, region=tooth) if match["pulp"] else codes(ANATOMY, tooth)
    incisive = re.match(r"^(left|right)_mandibular_incisive_canal_fdi10[34]$", class_name)
    if incisive:
        return codes(ANATOMY, INFERIOR_ALVEOLAR_NERVE, SIDES[incisive[1]], region=CENTRAL_INCISOR_REGION)
    return None


def _source_code(row: list[str], start: int) -> Optional[Code]:
    scheme, value, meaning = (cell.strip() for cell in row[start:start + 3])
    if not value:
        return None
    return Code(scheme, value, MEANINGS.get(value, meaning))


def read_source(path: Path) -> dict[str, Codes]:
    """Class name -> codes of one mapping CSV (both share the 15 code columns after the name)."""
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))[1:]
    return {row[0].strip(): dict(zip(CODE_FIELDS, (_source_code(row, 1 + 3 * i) for i in range(5))))
            for row in rows if row and row[0].strip()}


def class_codes(name: str, sources: list[dict[str, Codes]]) -> Codes:
    """Hand decision, else the tooth rule, else the first source that has the class."""
    decided = CODE_DECISIONS.get(name) or tooth_codes(name)
    if decided:
        return decided
    for source in sources:
        if name in source:
            return source[name]
    raise SystemExit(f"No codes for class '{name}': add it to CODE_DECISIONS.")


# --------------------------------------------------------------------------------------------------
# Laterality, display names, TA2 names
# --------------------------------------------------------------------------------------------------


def side_of(entry: Codes) -> Optional[str]:
    """'Left'/'Right' when the class is coded with a laterality modifier (of its type or its region)."""
    for field in ("type_modifier", "region_modifier"):
        code = entry[field]
        if code in (LEFT, RIGHT):
            return code.meaning
    return None


def base_name(name: str) -> str:
    """The class name without its side token (``rib_left_3`` -> ``rib_3``, ``left_x`` -> ``x``)."""
    return re.sub(r"(^(left|right)_)|(_(left|right)(?=_|$))", "", name, count=1)


ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII")

DISPLAY = {
    "lung_upper_lobe": "Upper lobe of lung", "lung_lower_lobe": "Lower lobe of lung",
    "lung_middle_lobe_right": "Middle lobe of right lung", "portal_vein_and_splenic_vein": "Portal and splenic vein",
    "iliac_artery": "Common iliac artery", "iliac_vena": "Common iliac vein", "clavicula": "Clavicle",
    "hip": "Hip bone", "autochthon": "Autochthonous back muscles", "atrial_appendage_left": "Left atrial appendage",
    "vertebrae": "Vertebrae", "heart_myocardium": "Myocardium", "heart_atrium_left": "Left atrium",
    "heart_atrium_right": "Right atrium", "heart_ventricle_left": "Left ventricle",
    "heart_ventricle_right": "Right ventricle", "body_trunc": "Trunk", "body_extremities": "Extremities",
    "lung_trachea_bronchia": "Trachea and bronchi", "lung_airways": "Airways", "lung_airways_wall": "Airway wall",
    "lung_arteries": "Pulmonary arteries", "lung_veins": "Pulmonary veins", "lung_pleural": "Pleura",
    "eye_lens": "Lens of eye", "auditory_canal": "External auditory canal", "larynx_air": "Air in larynx",
    "hyoid": "Hyoid bone", "sterno_thyroid": "Sternothyroid", "prevertebral": "Prevertebral muscles",
    "ventricle_frontal_horn": "Frontal horn of lateral ventricle",
    "ventricle_occipital_horn": "Occipital horn of lateral ventricle",
    "ventricle_body": "Body of lateral ventricle", "ventricle_temporal_horn": "Temporal horn of lateral ventricle",
    "ventricle_trigone": "Trigone of lateral ventricle", "sinus_maxillary": "Maxillary sinus",
    "sinus_frontal": "Frontal sinus", "teeth_lower": "Lower teeth", "teeth_upper": "Upper teeth",
    "bridge": "Dental bridge", "crown": "Dental crown", "implant": "Dental implant",
    "vertebrae_body": "Vertebral bodies", "tarsal": "Tarsal bones", "metatarsal": "Metatarsals",
    "phalanges_feet": "Phalanges of feet", "carpal": "Carpal bones", "metacarpal": "Metacarpals",
    "phalanges_hand": "Phalanges of hands", "venous_sinuses": "Dural venous sinuses", "ventricle": "Brain ventricles",
    "insular_cortex": "Insular cortex", "thigh_medial_compartment": "Medial thigh compartment",
    "thigh_posterior_compartment": "Posterior thigh compartment", "coracobrachial": "Coracobrachialis",
    "non_coronary_cusp": "Non-coronary cusp", "annulus_proper": "Aortic annulus", "annulus": "Aortic annulus",
    "sinotubular_junction": "Aortic sinotubular junction", "aorta_true_lumen": "True lumen of aorta",
    "aorta_false_lumen": "False lumen of aorta", "pul_annulus": "Pulmonary annulus",
    "pul_sinotubular_junction": "Pulmonary sinotubular junction", "pul_bifurcation": "Pulmonary bifurcation",
    "pul_left_start": "Origin of left pulmonary artery", "pul_right_start": "Origin of right pulmonary artery",
    "lower_jawbone": "Lower jawbone", "upper_jawbone": "Upper jawbone",
}


def _default_display(base: str) -> str:
    words = base.replace("_", " ")
    return words[:1].upper() + words[1:]


def _tooth_display(name: str) -> Optional[str]:
    match = FDI_CLASS.match(name)
    if not match:
        return None
    tooth = f"{match['jaw']} {match['side']} {match['tooth'].replace('_', ' ')} (FDI {int(match['n']) % 100})"
    return f"Pulp of {tooth}" if match["pulp"] else tooth[:1].upper() + tooth[1:]


def display_name(name: str, entry: Codes) -> str:
    """The panel name: "Vertebra T7", "Left upper lobe of lung", "Upper right canine (FDI 13)"."""
    special = _tooth_display(name)
    if special:
        return special
    level = re.match(r"^vertebrae_([CTLS]\d+)$", name)
    if level:
        return f"Vertebra {level[1]}"
    segment = re.match(r"^liver_segment_(\d)$", name)
    if segment:
        return f"Liver segment {ROMAN[int(segment[1]) - 1]}"
    side = side_of(entry)
    base = base_name(re.sub(r"_fdi\d+$", "", name)) if side else name
    text = DISPLAY.get(base) or _default_display(base)
    return f"{side} {text[:1].lower()}{text[1:]}" if side else text


# --------------------------------------------------------------------------------------------------
# Slicer's wording: the segment names the existing Slicer extension gives its classes
# --------------------------------------------------------------------------------------------------

SLICER_MAPPING = SOURCES[1]
SLICER_CONTEXT = SLICER_MAPPING.parent / "SegmentationCategoryTypeModifier-TotalSegmentator.term.json"
SLICER_CONTEXT_NAME = "Segmentation category and type - Total Segmentator"
DICOM_MASTER_NAME = "Segmentation category and type - DICOM master list"
DICOM_MASTER_COMMIT = "583e9b37d50ead7daf7b783dce465ccaecec8809"
"""Slicer commit the ``DICOM_MASTER_TYPES`` excerpt was taken from (the file is unchanged since 2020)."""

# The entries of Slicer's built-in "DICOM master list" context (Slicer/Slicer
# Modules/Loadable/Terminologies/Resources/SegmentationCategoryTypeModifier-DICOM-Master.json) that the
# extension's mapping refers to: (category, type) -> (CodeMeaning, 3dSlicerLabel, {modifier: (CodeMeaning,
# 3dSlicerLabel)}), codes as "scheme^value". Slicer ships the file; it is not in ../shared/reference.
DICOM_MASTER_TYPES: dict[tuple[str, str], tuple[str, str, dict[str, tuple[str, str]]]] = {
    ('SCT^123037004', 'SCT^1193009'): ('Teres major muscle', '', {}),
    ('SCT^123037004', 'SCT^2748008'): ('Spinal cord', 'spinal cord', {}),
    ('SCT^123037004', 'SCT^6423006'): ('Supraspinatus muscle', '', {}),
    ('SCT^123037004', 'SCT^10200004'): ('Liver', 'liver', {}),
    ('SCT^123037004', 'SCT^11000004'): ('Caudate nucleus', '', {}),
    ('SCT^123037004', 'SCT^12123001'):
        ('Internal jugular vein', '', {'SCT^24028007': ('Right', ''), 'SCT^7771000': ('Left', '')}),
    ('SCT^123037004', 'SCT^12738006'): ('Brain', 'brain', {}),
    ('SCT^123037004', 'SCT^13418002'): ('Left ventricle outflow tract', '', {}),
    ('SCT^123037004', 'SCT^15776009'): ('Pancreas', 'pancreas', {}),
    ('SCT^123037004', 'SCT^15825003'): ('Aorta', 'aorta', {}),
    ('SCT^123037004', 'SCT^16630005'): ('Parietal lobe', '', {}),
    ('SCT^123037004', 'SCT^18346003'):
        ('Serratus anterior muscle', '', {'SCT^24028007': ('Right', ''), 'SCT^7771000': ('Left', '')}),
    ('SCT^123037004', 'SCT^18686000'): ('Pectoralis minor muscle', '', {}),
    ('SCT^123037004', 'SCT^21387005'): ('Hyoid bone', 'hyoid bone', {}),
    ('SCT^123037004', 'SCT^21974007'): ('Tongue', 'tongue', {}),
    ('SCT^123037004', 'SCT^22823000'):
        ('Sternocleidomastoid muscle', '', {'SCT^24028007': ('Right', ''), 'SCT^7771000': ('Left', '')}),
    ('SCT^123037004', 'SCT^23451007'):
        ('Adrenal gland', '', {
            'SCT^24028007': ('Right', 'right adrenal gland'),
            'SCT^7771000': ('Left', 'left adrenal gland'),
        }),
    ('SCT^123037004', 'SCT^28231008'): ('Gallbladder', 'gallbladder', {}),
    ('SCT^123037004', 'SCT^30315005'): ('Small Intestine', 'small bowel', {}),
    ('SCT^123037004', 'SCT^31065004'): ('Occipital lobe', '', {}),
    ('SCT^123037004', 'SCT^31764008'):
        ('Trapezius muscle', '', {'SCT^24028007': ('Right', ''), 'SCT^7771000': ('Left', '')}),
    ('SCT^123037004', 'SCT^32849002'): ('Esophagus', 'esophagus', {}),
    ('SCT^123037004', 'SCT^35259002'): ('Deltoid muscle', '', {}),
    ('SCT^123037004', 'SCT^35764002'): ('Brain ventricle', 'ventricles of brain', {}),
    ('SCT^123037004', 'SCT^35918002'): ('Fourth ventricle', 'fourth ventricle', {}),
    ('SCT^123037004', 'SCT^35951006'): ('Subarachnoid space', 'subarachnoid space', {}),
    ('SCT^123037004', 'SCT^36169008'): ('Insula', '', {}),
    ('SCT^123037004', 'SCT^38848004'): ('Duodenum', 'duodenum', {}),
    ('SCT^123037004', 'SCT^39607008'):
        ('Lung', '', {'SCT^7771000': ('Left', 'left lung'), 'SCT^24028007': ('Right', 'right lung')}),
    ('SCT^123037004', 'SCT^41216001'): ('Prostate', 'prostate', {}),
    ('SCT^123037004', 'SCT^44567001'): ('Trachea', 'trachea', {}),
    ('SCT^123037004', 'SCT^45289007'): ('Parotid gland', '', {}),
    ('SCT^123037004', 'SCT^45653009'):
        ('Upper lobe of lung', '', {
            'SCT^7771000': ('Left', 'superior lobe of left lung'),
            'SCT^24028007': ('Right', 'superior lobe of right lung'),
        }),
    ('SCT^123037004', 'SCT^49460000'): ('Soft palate', 'soft palate', {}),
    ('SCT^123037004', 'SCT^49841001'): ('Third ventricle', '', {}),
    ('SCT^123037004', 'SCT^50755001'):
        ('Scalenous anterior muscle', '', {'SCT^24028007': ('Right', ''), 'SCT^7771000': ('Left', '')}),
    ('SCT^123037004', 'SCT^51282000'): ('Vertebra', '', {}),
    ('SCT^123037004', 'SCT^51299004'):
        ('Clavicle', '', {'SCT^7771000': ('Left', 'left clavicle'), 'SCT^24028007': ('Right', 'right clavicle')}),
    ('SCT^123037004', 'SCT^53085002'): ('Right ventricle', 'right ventricle of heart', {}),
    ('SCT^123037004', 'SCT^54019009'):
        ('Submandibular gland', '', {'SCT^24028007': ('Right', ''), 'SCT^7771000': ('Left', '')}),
    ('SCT^123037004', 'SCT^56873002'): ('Sternum', 'sternum', {}),
    ('SCT^123037004', 'SCT^64033007'):
        ('Kidney', '', {'SCT^24028007': ('Right', 'right kidney'), 'SCT^7771000': ('Left', 'left kidney')}),
    ('SCT^123037004', 'SCT^64234005'): ('Patella', '', {}),
    ('SCT^123037004', 'SCT^66019005'): ('Extremity', '', {}),
    ('SCT^123037004', 'SCT^69695003'): ('Stomach', 'stomach', {}),
    ('SCT^123037004', 'SCT^71854001'): ('Colon', 'colon', {}),
    ('SCT^123037004', 'SCT^72481006'): ('Middle lobe of right lung', 'middle lobe of right lung', {}),
    ('SCT^123037004', 'SCT^72573008'): ('Infraspinatus muscle', '', {}),
    ('SCT^123037004', 'SCT^73829009'): ('Right atrium', 'right atrium', {}),
    ('SCT^123037004', 'SCT^76752008'): ('Breast', '', {}),
    ('SCT^123037004', 'SCT^78277001'): ('Temporal lobe', '', {}),
    ('SCT^123037004', 'SCT^78961009'): ('Spleen', 'spleen', {}),
    ('SCT^123037004', 'SCT^79652003'):
        ('Eyeball', '', {'SCT^24028007': ('Right', 'right eyeball'), 'SCT^7771000': ('Left', 'left eyeball')}),
    ('SCT^123037004', 'SCT^80891009'): ('Heart', 'heart', {}),
    ('SCT^123037004', 'SCT^81502006'): ('Hypopharynx', '', {}),
    ('SCT^123037004', 'SCT^82471001'): ('Left atrium', 'left atrium', {}),
    ('SCT^123037004', 'SCT^83251001'): ('Frontal lobe', '', {}),
    ('SCT^123037004', 'SCT^86117002'):
        ('Internal carotid artery', '', {'SCT^24028007': ('Right', ''), 'SCT^7771000': ('Left', '')}),
    ('SCT^123037004', 'SCT^87342007'): ('Fibula', '', {}),
    ('SCT^123037004', 'SCT^87878005'): ('Left ventricle', 'left ventricle of heart', {}),
    ('SCT^123037004', 'SCT^89545001'): ('Face', '', {}),
    ('SCT^123037004', 'SCT^89546000'): ('Skull', 'skull', {}),
    ('SCT^123037004', 'SCT^89837001'): ('Bladder', 'urinary bladder', {}),
    ('SCT^123037004', 'SCT^90572001'):
        ('Lower lobe of lung', '', {
            'SCT^7771000': ('Left', 'inferior lobe of left lung'),
            'SCT^24028007': ('Right', 'inferior lobe of right lung'),
        }),
    ('SCT^123037004', 'SCT^90588001'): ('Subscapularis muscle', '', {}),
    ('SCT^123037004', 'SCT^113305005'): ('Cerebellum', '', {}),
    ('SCT^123037004', 'SCT^360955006'): ('Nasopharynx', '', {}),
    ('SCT^260787004', 'SCT^40388003'): ('Implant', '', {}),
    ('SCT^49755003', 'SCT^50960005'): ('Hemorrhage', 'bleeding', {}),
    ('SCT^49755003', 'SCT^367643001'): ('Cyst', 'cyst', {}),
}

ContextTypes = dict[tuple[str, str], tuple[str, str, dict[str, tuple[str, str]]]]


def _key(scheme: str, value: str) -> str:
    return f"{scheme}^{value}"


def read_context(path: Path) -> ContextTypes:
    """(category, type) -> (meaning, 3dSlicerLabel, modifiers) of a Slicer ``.term.json`` context file."""
    import json

    context = json.loads(path.read_text(encoding="utf-8"))
    found: ContextTypes = {}
    for category in context["SegmentationCodes"]["Category"]:
        for type_ in category.get("Type", []):
            modifiers = {_key(m["CodingSchemeDesignator"], m["CodeValue"]):
                         (m["CodeMeaning"], m.get("3dSlicerLabel", "")) for m in type_.get("Modifier", [])}
            key = (_key(category["CodingSchemeDesignator"], category["CodeValue"]),
                   _key(type_["CodingSchemeDesignator"], type_["CodeValue"]))
            found.setdefault(key, (type_["CodeMeaning"], type_.get("3dSlicerLabel", ""), modifiers))
    return found


def slicer_label(types: ContextTypes, category: str, type_: str, modifier: str) -> Optional[str]:
    """The extension's ``getSegmentLabelColor``: the type's 3dSlicerLabel, else its CodeMeaning; with a type
    modifier the modifier's 3dSlicerLabel, else "<type label> <modifier CodeMeaning>". None where the context
    lacks the type (or the modifier): the extension then logs an error and leaves the class name."""
    if (category, type_) not in types:
        return None
    meaning, label, modifiers = types[(category, type_)]
    type_label = label or meaning
    if not modifier:
        return type_label
    if modifier not in modifiers:
        return None
    modifier_meaning, modifier_label = modifiers[modifier]
    return modifier_label or f"{type_label} {modifier_meaning}"


def slicer_names() -> dict[str, str]:
    """Class name -> the segment name the existing Slicer extension shows with "use standard segment names".

    As ``loadTotalSegmentatorLabelTerminology``/``setTerminology`` there: each row of its mapping CSV gives
    category, type and type modifier (region and region modifier are in the entry too but take no part in the
    name); the entry is looked up in the extension's own context when that context lists the type (in any
    category), else in Slicer's DICOM master list; then ``slicer_label``.
    """
    own = read_context(SLICER_CONTEXT)
    own_types = {type_ for _, type_ in own}
    names = {}
    with open(SLICER_MAPPING, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            category, type_, modifier = (
                _key(row[f"{field}_CodingScheme"], row[f"{field}_CodeValue"]) if row[f"{field}_CodeValue"] else ""
                for field in ("Category", "Type", "TypeModifier"))
            types = own if type_ in own_types else DICOM_MASTER_TYPES
            label = slicer_label(types, category, type_, modifier)
            if row["Name"] and label:
                names[row["Name"]] = label
    return names


def display_names(names: list[str], entries: dict[str, Codes]) -> dict[str, str]:
    """The rule: Slicer's wording (``slicer_names``) where the extension gives the class one, else ours
    (``display_name``); but a class keeps ours where Slicer's would give two classes of one task the same name
    (Slicer names both sides of the parotid gland, both kidney cysts, the upper and lower "right canine tooth"
    and all 32 tooth pulps alike), repeated until every task's names are unique."""
    ours = {name: display_name(name, entries[name]) for name in names}
    slicer = {name: label for name, label in slicer_names().items() if name in ours}
    chosen = {**ours, **slicer}
    members = [task.class_names for task in all_tasks().values()]
    while True:
        clashes = set()
        for classes in members:
            seen: dict[str, list[str]] = {}
            for name in classes:
                seen.setdefault(chosen[name], []).append(name)
            clashes |= {name for group in seen.values() if len(group) > 1 for name in group if name in slicer}
        if not clashes:
            return chosen
        for name in clashes:
            chosen[name] = ours[name]
            del slicer[name]


# TA2 names of total and total_mr where they differ from the TotalSegmentator name (TotalSegmentator README).
TA2_SEED = {
    "adrenal_gland": "suprarenal gland", "lung_upper_lobe_left": "superior lobe of left lung",
    "lung_lower_lobe_left": "inferior lobe of left lung", "lung_upper_lobe_right": "superior lobe of right lung",
    "lung_middle_lobe_right": "middle lobe of right lung", "lung_lower_lobe_right": "inferior lobe of right lung",
    "small_bowel": "small intestine", "portal_vein_and_splenic_vein": "hepatic portal vein",
    "iliac_artery": "common iliac artery", "iliac_vena": "common iliac vein", "clavicula": "clavicle",
    "gluteus_maximus": "gluteus maximus muscle", "gluteus_medius": "gluteus medius muscle",
    "gluteus_minimus": "gluteus minimus muscle", "iliopsoas": "iliopsoas muscle",
}
# TA2 names of the other tasks' classes where TA2 has a standard term (no entry: none, e.g. lesions, landmarks).
TA2_OTHER = {
    "heart_myocardium": "myocardium", "heart_atrium_left": "left atrium", "heart_atrium_right": "right atrium",
    "heart_ventricle_left": "left ventricle", "heart_ventricle_right": "right ventricle",
    "pulmonary_artery": "pulmonary trunk", "body_trunc": "trunk", "lung_pleural": "pleura",
    "lung_veins": "pulmonary veins", "eye": "eyeball", "eye_lens": "lens", "optic_nerve": "optic nerve",
    "parotid_gland": "parotid gland", "submandibular_gland": "submandibular gland", "nasopharynx": "nasopharynx",
    "oropharynx": "oropharynx", "hypopharynx": "laryngopharynx", "nasal_cavity": "nasal cavity",
    "auditory_canal": "external acoustic meatus", "soft_palate": "soft palate", "hard_palate": "hard palate",
    "thyroid_cartilage": "thyroid cartilage", "hyoid": "hyoid bone", "cricoid_cartilage": "cricoid cartilage",
    "zygomatic_arch": "zygomatic arch", "styloid_process": "styloid process",
    "internal_carotid_artery": "internal carotid artery", "internal_jugular_vein": "internal jugular vein",
    "masseter": "masseter", "temporalis": "temporalis", "lateral_pterygoid": "lateral pterygoid",
    "medial_pterygoid": "medial pterygoid", "tongue": "tongue", "digastric": "digastric",
    "sternocleidomastoid": "sternocleidomastoid", "superior_pharyngeal_constrictor": "superior pharyngeal constrictor",
    "middle_pharyngeal_constrictor": "middle pharyngeal constrictor",
    "inferior_pharyngeal_constrictor": "inferior pharyngeal constrictor", "trapezius": "trapezius",
    "platysma": "platysma", "levator_scapulae": "levator scapulae", "anterior_scalene": "scalenus anterior",
    "middle_scalene": "scalenus medius", "posterior_scalene": "scalenus posterior", "sterno_thyroid": "sternothyroid",
    "thyrohyoid": "thyrohyoid", "skull": "skull", "eyeball": "eyeball", "lateral_rectus_muscle": "lateral rectus",
    "superior_oblique_muscle": "superior oblique", "levator_palpebrae_superioris": "levator palpebrae superioris",
    "superior_rectus_muscle": "superior rectus", "medial_rectus_muscle": "medial rectus",
    "inferior_oblique_muscle": "inferior oblique", "inferior_rectus_muscle": "inferior rectus", "lung": "lung",
    "breast": "breast", "ventricle_frontal_horn": "frontal horn of lateral ventricle",
    "ventricle_occipital_horn": "occipital horn of lateral ventricle",
    "ventricle_body": "central part of lateral ventricle",
    "ventricle_temporal_horn": "temporal horn of lateral ventricle", "ventricle_trigone": "collateral trigone",
    "third_ventricle": "third ventricle", "fourth_ventricle": "fourth ventricle", "liver_segment_1": "caudate lobe",
    "liver_segment_2": "left posterior lateral segment", "liver_segment_3": "left anterior lateral segment",
    "liver_segment_4": "left medial segment", "liver_segment_5": "anterior medial segment",
    "liver_segment_6": "anterior lateral segment", "liver_segment_7": "posterior lateral segment",
    "liver_segment_8": "posterior medial segment", "mandible": "mandible", "head": "head",
    "sinus_maxillary": "maxillary sinus", "sinus_frontal": "frontal sinus", "pectoralis_major": "pectoralis major",
    "rectus_abdominis": "rectus abdominis", "serratus_anterior": "serratus anterior",
    "latissimus_dorsi": "latissimus dorsi", "external_oblique": "external oblique",
    "internal_oblique": "internal oblique", "erector_spinae": "erector spinae",
    "transversospinalis": "transversospinales", "psoas_major": "psoas major",
    "quadratus_lumborum": "quadratus lumborum", "lower_jawbone": "mandible", "upper_jawbone": "maxilla",
    "inferior_alveolar_canal": "mandibular canal", "maxillary_sinus": "maxillary sinus", "pharynx": "pharynx",
    "abdominal_cavity": "abdominal cavity", "thoracic_cavity": "thoracic cavity", "pericardium": "pericardium",
    "mediastinum": "mediastinum", "vertebrae_body": "vertebral body", "patella": "patella", "tibia": "tibia",
    "fibula": "fibula", "tarsal": "tarsal bones", "metatarsal": "metatarsals", "phalanges_feet": "phalanges of foot",
    "ulna": "ulna", "radius": "radius", "carpal": "carpal bones", "metacarpal": "metacarpals",
    "phalanges_hand": "phalanges of hand", "face": "face", "brainstem": "brainstem",
    "subarachnoid_space": "subarachnoid space", "venous_sinuses": "dural venous sinuses",
    "septum_pellucidum": "septum pellucidum", "cerebellum": "cerebellum", "caudate_nucleus": "caudate nucleus",
    "lentiform_nucleus": "lentiform nucleus", "insular_cortex": "insula", "internal_capsule": "internal capsule",
    "central_sulcus": "central sulcus", "frontal_lobe": "frontal lobe", "parietal_lobe": "parietal lobe",
    "occipital_lobe": "occipital lobe", "temporal_lobe": "temporal lobe", "thalamus": "thalamus",
    "quadriceps_femoris": "quadriceps femoris", "thigh_medial_compartment": "medial compartment of thigh",
    "thigh_posterior_compartment": "posterior compartment of thigh", "sartorius": "sartorius",
    "deltoid": "deltoid", "supraspinatus": "supraspinatus", "infraspinatus": "infraspinatus",
    "subscapularis": "subscapularis", "coracobrachial": "coracobrachialis", "pectoralis_minor": "pectoralis minor",
    "teres_major": "teres major", "triceps_brachii": "triceps brachii", "coronary_arteries": "coronary arteries",
    "right_coronary_cusp": "right semilunar cusp", "left_coronary_cusp": "left semilunar cusp",
    "non_coronary_cusp": "posterior semilunar cusp", "celiac_trunk": "coeliac trunk",
    "superior_mesenteric_artery": "superior mesenteric artery", "renal_arteries": "renal artery",
    "intervertebral_discs": "intervertebral disc",
}
TOOTH_TA2 = {"central_incisor": "incisor tooth", "lateral_incisor": "incisor tooth", "canine": "canine tooth",
             "first_premolar": "premolar tooth", "second_premolar": "premolar tooth", "first_molar": "molar tooth",
             "second_molar": "molar tooth", "third_molar": "third molar tooth"}
SEEDED_TASKS = ("total", "total_mr")


def ta2_name(name: str, entry: Codes, seeded: set[str]) -> str:
    """TA2 name without laterality (TA2 names a structure once for both sides, as the README does)."""
    base = base_name(name) if side_of(entry) else name
    tooth = FDI_CLASS.match(name)
    if tooth:
        return "dental pulp" if tooth["pulp"] else TOOTH_TA2[tooth["tooth"]]
    if name in TA2_SEED or base in TA2_SEED:
        return TA2_SEED.get(name) or TA2_SEED[base]
    if name in seeded and entry["category"] == ANATOMY:  # README: the TotalSegmentator name is the TA2 name
        return re.sub(r"^vertebrae_", "vertebra ", base).replace("_", " ")
    return TA2_OTHER.get(base, "")


# --------------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------------

# Base colours (the left one of a pair). Organs follow Slicer's GenericAnatomy colours; where two touching
# structures share or nearly share one there (stomach/liver, colon/small bowel, gluteal muscles, ...) the
# colour is moved in hue or lightness just enough to pass the contrast rule.
COLORS: dict[str, RGB] = {
    # abdomen and thorax organs
    "spleen": (157, 108, 162), "kidney": (185, 102, 83), "gallbladder": (139, 150, 98), "liver": (221, 130, 101),
    "stomach": (236, 180, 110), "pancreas": (249, 180, 111), "adrenal_gland": (250, 210, 80),
    "esophagus": (211, 171, 143), "trachea": (182, 228, 255), "thyroid_gland": (62, 162, 114),
    "small_bowel": (250, 200, 170), "duodenum": (255, 253, 229), "colon": (160, 120, 80),
    "urinary_bladder": (210, 130, 120), "prostate": (170, 120, 200), "kidney_cyst": (205, 205, 100),
    "lung_upper_lobe": (172, 138, 115), "lung_lower_lobe": (240, 205, 190), "lung_middle_lobe_right": (202, 164, 140),
    "lung": (197, 165, 145), "brain": (250, 250, 225), "spinal_cord": (244, 214, 49), "heart": (206, 110, 84),
    "breast": (255, 210, 190), "face": (177, 122, 101), "head": (177, 122, 101), "body_trunc": (177, 122, 101),
    "body_extremities": (140, 100, 160),
    # vessels: arteries red, veins blue
    "aorta": (224, 97, 76), "pulmonary_vein": (186, 77, 64), "brachiocephalic_trunk": (196, 121, 79),
    "subclavian_artery": (216, 101, 79), "common_carotid_artery": (230, 80, 60), "brachiocephalic_vein": (0, 151, 206),
    "atrial_appendage_left": (170, 80, 110), "superior_vena_cava": (0, 141, 226), "inferior_vena_cava": (0, 151, 206),
    "portal_vein_and_splenic_vein": (0, 100, 160), "iliac_artery": (250, 150, 170), "iliac_vena": (0, 151, 206),
    "pulmonary_artery": (120, 200, 250), "coronary_arteries": (220, 20, 22), "internal_carotid_artery": (216, 101, 79),
    "internal_jugular_vein": (0, 151, 206), "celiac_trunk": (216, 101, 79), "superior_mesenteric_artery": (190, 60, 50),
    "renal_arteries": (240, 130, 100), "lung_vessels": (180, 20, 22), "lung_arteries": (0, 122, 171),
    "lung_veins": (186, 77, 64), "liver_vessels": (0, 151, 206), "venous_sinuses": (0, 151, 206),
    "aorta_true_lumen": (224, 97, 76), "aorta_false_lumen": (130, 40, 120),
    # heart
    "heart_myocardium": (206, 110, 84), "heart_atrium_left": (203, 108, 81), "heart_ventricle_left": (152, 55, 13),
    "heart_atrium_right": (0, 151, 206), "heart_ventricle_right": (0, 100, 160),
    "left_ventricular_outflow_tract": (152, 55, 13),
    "right_coronary_cusp": (255, 200, 60), "left_coronary_cusp": (80, 170, 90), "non_coronary_cusp": (150, 150, 230),
    "annulus_proper": (255, 220, 60), "annulus": (255, 220, 60), "sinotubular_junction": (60, 200, 120),
    "pul_annulus": (80, 200, 255), "pul_sinotubular_junction": (150, 110, 230), "pul_bifurcation": (255, 120, 200),
    "pul_left_start": (0, 90, 200), "pul_right_start": (110, 210, 200),
    # bones (ivory family)
    "sacrum": (230, 230, 150), "humerus": (205, 179, 108), "scapula": (212, 188, 102), "clavicula": (205, 179, 108),
    "femur": (255, 238, 170), "hip": (215, 180, 110), "skull": (241, 213, 144), "sternum": (244, 217, 154),
    "costal_cartilages": (111, 184, 210), "vertebrae": (241, 214, 145), "intervertebral_discs": (111, 184, 210),
    "vertebrae_body": (241, 214, 145), "patella": (235, 180, 160), "tibia": (245, 228, 180), "fibula": (196, 160, 95),
    "tarsal": (235, 180, 160), "metatarsal": (245, 228, 180), "phalanges_feet": (196, 160, 95),
    "ulna": (245, 228, 180), "radius": (196, 160, 95), "carpal": (235, 180, 160), "metacarpal": (245, 228, 180),
    "phalanges_hand": (196, 160, 95), "mandible": (222, 198, 101), "lower_jawbone": (222, 198, 101),
    "upper_jawbone": (196, 172, 68), "hyoid": (250, 210, 139), "zygomatic_arch": (255, 243, 152),
    "styloid_process": (229, 204, 109), "thyroid_cartilage": (111, 184, 210), "cricoid_cartilage": (60, 120, 160),
    # muscles (Slicer muscle red, spread in hue and lightness between neighbours)
    "gluteus_maximus": (188, 95, 76), "gluteus_medius": (230, 150, 110), "gluteus_minimus": (140, 50, 70),
    "autochthon": (171, 85, 68), "iliopsoas": (170, 90, 130), "skeletal_muscle": (192, 104, 88),
    "quadriceps_femoris": (250, 150, 100), "thigh_medial_compartment": (140, 50, 70),
    "thigh_posterior_compartment": (200, 150, 170), "sartorius": (235, 190, 120), "deltoid": (188, 95, 76),
    "supraspinatus": (235, 190, 120), "infraspinatus": (140, 50, 70), "subscapularis": (220, 120, 140),
    "coracobrachial": (235, 190, 120), "trapezius": (188, 95, 76), "pectoralis_minor": (120, 60, 40),
    "serratus_anterior": (200, 150, 170), "teres_major": (250, 150, 100), "triceps_brachii": (170, 90, 130),
    "pectoralis_major": (140, 50, 70), "rectus_abdominis": (188, 95, 76), "latissimus_dorsi": (250, 150, 100),
    "external_oblique": (235, 190, 120), "internal_oblique": (140, 50, 70), "erector_spinae": (188, 95, 76),
    "transversospinalis": (220, 120, 140), "psoas_major": (170, 90, 130), "quadratus_lumborum": (250, 150, 100),
    "masseter": (188, 95, 76), "temporalis": (235, 190, 120), "lateral_pterygoid": (140, 50, 70),
    "medial_pterygoid": (220, 120, 140), "digastric": (250, 150, 100), "tongue": (166, 84, 94),
    "sternocleidomastoid": (220, 120, 140), "superior_pharyngeal_constrictor": (140, 50, 70),
    "middle_pharyngeal_constrictor": (235, 190, 120), "inferior_pharyngeal_constrictor": (170, 90, 130),
    "platysma": (235, 190, 120), "levator_scapulae": (140, 50, 70), "anterior_scalene": (250, 150, 100),
    "middle_scalene": (170, 90, 130), "posterior_scalene": (200, 150, 170), "sterno_thyroid": (220, 120, 140),
    "thyrohyoid": (120, 60, 40), "prevertebral": (120, 60, 40),
    "lateral_rectus_muscle": (201, 121, 77), "superior_oblique_muscle": (150, 60, 50),
    "levator_palpebrae_superioris": (250, 180, 140), "superior_rectus_muscle": (220, 120, 140),
    "medial_rectus_muscle": (230, 150, 110), "inferior_oblique_muscle": (170, 80, 110),
    "inferior_rectus_muscle": (190, 100, 60),
    # head and neck
    "eye": (194, 142, 0), "eyeball": (194, 142, 0), "eye_lens": (180, 220, 255), "optic_nerve": (244, 214, 49),
    "parotid_gland": (70, 163, 117), "submandibular_gland": (130, 200, 90), "nasopharynx": (184, 105, 108),
    "oropharynx": (230, 160, 170), "hypopharynx": (140, 70, 90), "nasal_cavity": (150, 208, 243),
    "auditory_canal": (174, 122, 90), "soft_palate": (182, 105, 107), "hard_palate": (242, 206, 142),
    "larynx_air": (218, 255, 255), "sinus_maxillary": (180, 210, 230), "sinus_frontal": (120, 170, 220),
    "maxillary_sinus": (180, 210, 230), "pharynx": (184, 105, 108), "teeth_lower": (255, 250, 220),
    "teeth_upper": (210, 230, 240), "inferior_alveolar_canal": (244, 214, 49), "lingual_canal": (195, 175, 155),
    "mandibular_incisive_canal": (255, 160, 40), "bridge": (200, 200, 200), "crown": (150, 150, 170),
    "implant": (120, 120, 120),
    # brain
    "brainstem": (145, 92, 109), "subarachnoid_space": (88, 106, 215), "septum_pellucidum": (250, 250, 210),
    "cerebellum": (194, 195, 164), "caudate_nucleus": (30, 111, 85), "lentiform_nucleus": (210, 157, 166),
    "insular_cortex": (150, 110, 180), "internal_capsule": (255, 240, 180), "ventricle": (88, 106, 215),
    "central_sulcus": (220, 160, 30), "frontal_lobe": (83, 146, 164), "parietal_lobe": (141, 93, 137),
    "occipital_lobe": (182, 166, 110), "temporal_lobe": (162, 115, 105), "thalamus": (122, 101, 38),
    "ventricle_frontal_horn": (88, 106, 215), "ventricle_body": (140, 160, 240), "ventricle_trigone": (40, 60, 160),
    "ventricle_occipital_horn": (120, 200, 255), "ventricle_temporal_horn": (180, 120, 230),
    "third_ventricle": (170, 60, 180), "fourth_ventricle": (60, 180, 200),
    # cavities, tissues, findings, objects
    "abdominal_cavity": (186, 124, 161), "thoracic_cavity": (200, 220, 240), "pericardium": (255, 200, 200),
    "mediastinum": (220, 210, 130), "lung_pleural": (255, 245, 217), "pleural_effusion": (0, 210, 255),
    "pericardial_effusion": (170, 250, 250), "lung_airways": (182, 228, 255), "lung_airways_wall": (240, 170, 190),
    "lung_trachea_bronchia": (182, 228, 255), "lung_nodules": (144, 238, 144), "liver_tumor": (144, 238, 144),
    "liver_lesions": (255, 200, 50), "intracerebral_hemorrhage": (188, 65, 28), "brain_aneurysm": (255, 50, 50),
    "hip_implant": (120, 120, 120), "subcutaneous_fat": (230, 220, 70), "torso_fat": (250, 180, 60),
    "intermuscular_fat": (255, 240, 150),
}

# Series whose neighbours touch: a short cycle of well separated tints, so any two consecutive members differ.
VERTEBRA_CYCLE: tuple[RGB, ...] = ((245, 228, 180), (196, 160, 95), (235, 180, 160))
SPINE = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 7)] + ["S1"]
RIB_CYCLE = {"left": ((255, 205, 120), (185, 135, 60)), "right": ((250, 240, 215), (200, 185, 120))}
LIVER_SEGMENTS: tuple[RGB, ...] = ((170, 80, 60), (240, 160, 120), (200, 200, 90), (140, 60, 140),
                                   (250, 110, 80), (110, 150, 70), (240, 190, 210), (120, 90, 40))
TOOTH_CYCLE: tuple[RGB, ...] = ((255, 250, 220), (215, 200, 150))
PULP_CYCLE: tuple[RGB, ...] = ((220, 90, 90), (160, 40, 70))


def _series_color(name: str) -> Optional[RGB]:
    level = re.match(r"^vertebrae_([CTLS]\d+)$", name)
    if level:
        return VERTEBRA_CYCLE[SPINE.index(level[1]) % len(VERTEBRA_CYCLE)]
    rib = re.match(r"^rib_(left|right)_(\d+)$", name)
    if rib:
        return RIB_CYCLE[rib[1]][int(rib[2]) % 2]
    segment = re.match(r"^liver_segment_(\d)$", name)
    if segment:
        return LIVER_SEGMENTS[int(segment[1]) - 1]
    tooth = FDI_CLASS.match(name)
    if tooth:
        cycle = PULP_CYCLE if tooth["pulp"] else TOOTH_CYCLE
        quadrant, position = divmod(int(tooth["n"]) % 100, 10)
        return cycle[(quadrant + position) % 2]  # neighbours alternate, also across the midline (11/21)
    return None


def _srgb(linear: float) -> int:
    value = 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055
    return max(0, min(255, round(value * 255)))


def lab_to_rgb(lab: tuple[float, float, float]) -> RGB:
    """sRGB (0..255, clipped) of a CIELAB (D65) colour; the inverse of ``terminology.rgb_to_lab``."""
    lightness, a, b = lab
    fy = (lightness + 16) / 116
    f = (fy + a / 500, fy, fy - b / 200)
    xyz = [(t ** 3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)) * white
           for t, white in zip(f, (0.95047, 1.0, 1.08883))]
    inverse = ((3.2404542, -1.5371385, -0.4985314), (-0.9692660, 1.8760108, 0.0415560),
               (0.0556434, -0.2040259, 1.0572252))
    return tuple(_srgb(sum(m * c for m, c in zip(row, xyz))) for row in inverse)


RIGHT_SIDE_LIGHTNESS = -22.0
"""Right-side structures: the left colour with CIELAB lightness lowered (raised for dark ones) by this much."""


def right_side(color: RGB) -> RGB:
    lightness, a, b = terminology.rgb_to_lab(color)
    shift = RIGHT_SIDE_LIGHTNESS if lightness + RIGHT_SIDE_LIGHTNESS > 25 else -RIGHT_SIDE_LIGHTNESS
    return lab_to_rgb((lightness + shift, a, b))


def class_color(name: str, entry: Codes) -> RGB:
    """Series colour, else the base colour, darkened on the right side of a left/right pair."""
    series = _series_color(name)
    if series:
        return series
    side = side_of(entry)
    base = base_name(re.sub(r"_fdi\d+$", "", name)) if side else name
    if base not in COLORS:
        raise SystemExit(f"No colour for class '{name}' (base '{base}'): add it to COLORS.")
    return right_side(COLORS[base]) if side == "Right" else COLORS[base]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

HEADER = """\
# Terminology of every TotalSegmentator class (all classes of all tasks of the task registry).
# Generated by tools/build_terminology.py from TotalSegmentator's SNOMED CT mapping, the Slicer extension's
# mapping and the README's TA2 names, with hand decisions; see TERMINOLOGY.md beside this file for each decision.
# Do not edit by hand: change the script and run it again.
# Codes: coding scheme designator, code value, code meaning (empty when the class has no such code).
# Colours: sRGB 0-255; touching classes differ by CIE76 Delta-E >= {min_distance:g} (totalseg_engine.terminology).
"""


def class_names() -> tuple[list[str], set[str]]:
    """Every distinct class name in registry order, and those of the tasks the README's TA2 table covers."""
    tasks = all_tasks()
    names = list(dict.fromkeys(name for task in tasks.values() for name in task.class_names))
    seeded = {name for task in SEEDED_TASKS for name in tasks[task].class_names}
    return names, seeded


def _code_cells(code: Optional[Code]) -> list[str]:
    return [code.scheme, code.value, code.meaning] if code else ["", "", ""]


def table_row(name: str, entry: Codes, seeded: set[str], shown: str) -> list[str]:
    cells = [name, shown, ta2_name(name, entry, seeded)]
    for field in CODE_FIELDS:
        cells += _code_cells(entry[field])
    return cells + [str(channel) for channel in class_color(name, entry)]


def table_text() -> str:
    """The whole CSV text: comment header, column names, one row per class."""
    sources = [read_source(path) for path in SOURCES]
    names, seeded = class_names()
    stream = io.StringIO()
    stream.write(HEADER.format(min_distance=terminology.MIN_COLOR_DISTANCE))
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    entries = {name: class_codes(name, sources) for name in names}
    shown = display_names(names, entries)
    for name in names:
        writer.writerow(table_row(name, entries[name], seeded, shown[name]))
    return stream.getvalue()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the shipped files are current")
    args = parser.parse_args(argv)
    text = table_text()
    context = terminology.term_json_text(items=terminology.parse_table(text).values())
    if args.check:
        current = [path.exists() and path.read_text(encoding="utf-8") == wanted
                   for path, wanted in ((TABLE, text), (TERM_JSON, context))]
        print("terminology files are current" if all(current) else "out of date: run without --check")
        return 0 if all(current) else 1
    TABLE.write_text(text, encoding="utf-8")
    TERM_JSON.write_text(context, encoding="utf-8")
    print(f"wrote {TABLE} ({text.count(chr(10)) - HEADER.count(chr(10)) - 1} classes) and {TERM_JSON}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
