"""Split selection and the generalization protocols."""
import pytest

from umedfast.data import MAURecord
from umedfast.data.splits import select


def _r(i, source, modality, labels, split):
    return MAURecord(id=str(i), image="x", source=source, modality=modality, query="", response="", split=split,
                     findings=[{"label": lab, "box_xyxy": [0, 0, 1, 1]} for lab in labels], image_size=[2, 2])


RECS = [
    _r(0, "synth-nih", "X-ray", ["mass"], "train"),
    _r(1, "synth-nih", "X-ray", ["nodule"], "train"),
    _r(2, "synth-nih", "X-ray", ["nodule", "mass"], "val"),
    _r(3, "synth-kvasir", "endoscopy", ["polyp"], "train"),
    _r(4, "synth-tbx11k", "X-ray", [], "test"),
    _r(5, "tbx11k", "X-ray", ["active tuberculosis"], "train"),
    _r(6, "synth-nih", "X-ray", [], "test"),
]


def ids(rs):
    return [r.id for r in rs]


def test_plain_splits():
    assert ids(select(RECS, "train")) == ["0", "1", "3", "5"]
    assert ids(select(RECS, "test")) == ["4", "6"]


def test_category_generalization():
    assert ids(select(RECS, "train", "category", ["mass"])) == ["1", "3", "5"]
    assert ids(select(RECS, "val", "category", ["mass"])) == []
    assert ids(select(RECS, "test", "category", "mass")) == ["0", "2"]


def test_source_generalization_matches_synth_prefix():
    assert ids(select(RECS, "test", "source", ["tbx11k"])) == ["4", "5"]
    assert ids(select(RECS, "train", "source", ["tbx11k"])) == ["0", "1", "3"]


def test_modality_generalization_default_endoscopy():
    assert ids(select(RECS, "test", "modality")) == ["3"]
    assert "3" not in ids(select(RECS, "train", "modality"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        select(RECS, "dev")
    with pytest.raises(ValueError, match="generalization"):
        select(RECS, "train", "organ")
