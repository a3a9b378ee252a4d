"""Sources, their modalities and class names, and the synonyms accepted when scoring a written label.

Labels inside umedfast are short lowercase English names (what the template writer puts verbatim in responses);
the synonyms include each dataset's official spelling so an answer in either form counts as correct.
"""
from __future__ import annotations

SOURCES = ("deeplesion", "kidneystone", "nih", "tbx11k", "kvasir")

# Real sources and the synthetic sources that mirror them (MAU-Synth records carry the "synth-" names).
MODALITY = {
    "deeplesion": "CT", "kidneystone": "CT", "nih": "X-ray", "tbx11k": "X-ray", "kvasir": "endoscopy",
    "synth-deeplesion": "CT", "synth-kidneystone": "CT", "synth-nih": "X-ray", "synth-tbx11k": "X-ray",
    "synth-kvasir": "endoscopy",
}

# DeepLesion Coarse_lesion_type 1..8 (-1 = unlabeled in the official release).
DEEPLESION_TYPES = {1: "bone lesion", 2: "abdomen lesion", 3: "mediastinum lesion", 4: "liver lesion",
                    5: "lung lesion", 6: "kidney lesion", 7: "soft tissue lesion", 8: "pelvis lesion", -1: "lesion"}

# NIH ChestX-ray14 BBox_List_2017.csv finding labels -> our label.
NIH_LABELS = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly", "Effusion": "effusion",
              "Infiltrate": "infiltrate", "Infiltration": "infiltrate", "Mass": "mass", "Nodule": "nodule",
              "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax"}

TBX11K_LABELS = {"ActiveTuberculosis": "active tuberculosis",
                 "ObsoletePulmonaryTuberculosis": "obsolete tuberculosis",
                 "PulmonaryTuberculosis": "pulmonary tuberculosis"}


# No bare organ words ("lung") as synonyms: an answer mentioning the organ must not count as naming the class.
_DL = {name: [name] for name in DEEPLESION_TYPES.values()}
_DL["lesion"] = ["lesion", "abnormality"]
_DL["lung lesion"] += ["lung nodule", "pulmonary lesion", "pulmonary nodule"]
_DL["liver lesion"] += ["hepatic lesion", "liver mass", "hypodense lesion"]

_NIH = {
    "atelectasis": ["atelectasis", "collapse"],
    "cardiomegaly": ["cardiomegaly", "enlarged heart"],
    "effusion": ["effusion", "pleural effusion", "fluid"],
    "infiltrate": ["infiltrate", "infiltration", "infiltrates"],
    "mass": ["mass", "lung mass", "pulmonary mass"],
    "nodule": ["nodule", "lung nodule", "pulmonary nodule"],
    "pneumonia": ["pneumonia", "consolidation"],
    "pneumothorax": ["pneumothorax", "collapsed lung"],
}
_TB = {
    "active tuberculosis": ["active tuberculosis", "ActiveTuberculosis", "active TB"],
    "obsolete tuberculosis": ["obsolete tuberculosis", "ObsoletePulmonaryTuberculosis",
                              "obsolete pulmonary tuberculosis", "healed tuberculosis", "old tuberculosis"],
    "pulmonary tuberculosis": ["pulmonary tuberculosis", "PulmonaryTuberculosis", "tuberculosis", "TB"],
}
_KS = {"kidney stone": ["kidney stone", "renal stone", "renal calculus", "nephrolithiasis", "stone", "calculus"]}
_KV = {"polyp": ["polyp", "colorectal polyp", "colon polyp"]}

# CLASS_SYNONYMS[source][label] -> accepted spellings (compare case-insensitively).
CLASS_SYNONYMS: dict[str, dict[str, list[str]]] = {
    "deeplesion": _DL, "nih": _NIH, "tbx11k": _TB, "kidneystone": _KS, "kvasir": _KV,
    "synth-deeplesion": {k: _DL[k] for k in ("liver lesion", "lung lesion")},
    "synth-kidneystone": _KS,
    "synth-nih": {k: _NIH[k] for k in ("nodule", "mass", "effusion")},
    "synth-tbx11k": {k: _TB[k] for k in ("active tuberculosis", "obsolete tuberculosis")},
    "synth-kvasir": _KV,
}


def synonyms(source: str, label: str) -> list[str]:
    """Accepted spellings of ``label`` for ``source`` (the label itself when unknown)."""
    return CLASS_SYNONYMS.get(source, {}).get(label, [label])
