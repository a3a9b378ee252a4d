"""Source adapters on small files written in the official layouts; error messages; skip_bad; root confinement."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from umedfast.data import load_image, load_source
from umedfast.data.build import findings_to_records, write_records
from umedfast.data.sources import SourceFormatError
from umedfast.data.sources.base import safe_join

DL_HEADER = ("File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,Bounding_boxes,"
             "Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,Possibly_noisy,Slice_range,"
             "Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,Train_Val_Test")


def _png(path, size=(64, 48), mode="L", value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), value, np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


def _dl_row(name, box, ctype, window="-175, 275", split=1):
    return (f'{name},1,1,1,109,"1,2,3,4","{box}","5, 6","0.5, 0.5, 0.5",{ctype},0,"100, 120",'
            f'"0.7, 0.7, 5",\"64, 64\","{window}",F,50,{split}')


@pytest.fixture
def deeplesion(tmp_path):
    root = tmp_path / "DeepLesion"
    hu = np.full((64, 64), -1000, np.int32)
    hu[20:40, 20:40] = 40  # soft-tissue lesion
    for series in ("000001_01_01", "000002_01_01"):
        p = root / "Images_png" / series / "109.png"
        p.parent.mkdir(parents=True)
        Image.fromarray((hu + 32768).astype(np.uint16)).save(p)
    return root


def test_deeplesion_windowed_records(deeplesion, tmp_path):
    rows = [_dl_row("000001_01_01_109.png", "20.5, 20.1, 40.2, 39.9", 4),
            _dl_row("000002_01_01_109.png", "10, 10, 30, 30", -1, split=3)]
    (deeplesion / "DL_info.csv").write_text(DL_HEADER + "\n" + "\n".join(rows) + "\n")
    fs = load_source("deeplesion", deeplesion)
    assert [f.label for f in fs] == ["liver lesion", "lesion"]
    assert fs[0].box_xyxy == (20.5, 20.1, 40.2, 39.9) and fs[0].image_size == (64, 64) and fs[0].modality == "CT"
    assert fs[0].meta["window"] == [-175.0, 275.0] and fs[1].meta["split"] == "test"
    recs = write_records(findings_to_records(fs), progress=False)
    assert len({r.id for r in recs}) == 2 and recs[0].split == "train"
    g = np.asarray(load_image(recs[0]))[..., 0]
    # HU 40 in window [-175, 275] -> (215 / 450) * 255 = 122; air -> 0
    assert abs(int(g[30, 30]) - 122) <= 1 and g[0, 0] == 0
    assert "liver lesion" in recs[0].response


@pytest.mark.parametrize("row,msg", [
    (_dl_row("000001_01_01_109.png", "20, 20, 90, 40", 4), "outside the 64x64 image"),
    (_dl_row("000001_01_01_109.png", "20, 20, 40, 40", 12), "unknown Coarse_lesion_type 12"),
    (_dl_row("000009_01_01_109.png", "20, 20, 40, 40", 4), "000009_01_01/109.png not found"),
    (_dl_row("000001_01_01_109.png", "20, 20, 40", 4), "Bounding_boxes must have 4 numbers"),
    (_dl_row("000001_01_01_109.png", "40, 20, 20, 40", 4), "no area"),
])
def test_deeplesion_bad_rows_name_file_and_line(deeplesion, row, msg):
    good = _dl_row("000001_01_01_109.png", "20, 20, 40, 40", 4)
    (deeplesion / "DL_info.csv").write_text(DL_HEADER + "\n" + good + "\n" + row + "\n")
    with pytest.raises(SourceFormatError, match=rf"DL_info\.csv:3: .*{msg}"):
        load_source("deeplesion", deeplesion)
    fs = load_source("deeplesion", deeplesion, skip_bad=True)
    assert len(fs) == 1 and len(fs.skipped) == 1 and "DL_info.csv:3" in fs.skipped[0]


def test_deeplesion_missing_column(deeplesion):
    (deeplesion / "DL_info.csv").write_text("File_name,Bounding_boxes\nx.png,\"1,2,3,4\"\n")
    with pytest.raises(SourceFormatError, match=r"DL_info\.csv:1: missing column"):
        load_source("deeplesion", deeplesion)


def test_deeplesion_unreadable_image(deeplesion):
    (deeplesion / "Images_png" / "000001_01_01" / "109.png").write_bytes(b"not a png")
    (deeplesion / "DL_info.csv").write_text(DL_HEADER + "\n" + _dl_row("000001_01_01_109.png", "1, 1, 9, 9", 4) + "\n")
    with pytest.raises(SourceFormatError, match=r"DL_info\.csv:2: cannot read image"):
        load_source("deeplesion", deeplesion)


NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"


def test_nih(tmp_path):
    root = tmp_path / "nih"
    _png(root / "images_001" / "images" / "00000001_000.png", (128, 128))
    _png(root / "images_002" / "images" / "00000002_000.png", (128, 128))
    _png(root / "images_002" / "images" / "00000003_000.png", (128, 128))
    (root / "BBox_List_2017.csv").write_text(
        NIH_HEADER + "00000001_000.png,Nodule,10.5,20.25,30,40,,,\n00000002_000.png,Infiltrate,0,0,128,64,,,\n")
    (root / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Follow-up #\n00000003_000.png,No Finding,0\n00000004_000.png,No Finding,0\n")
    fs = load_source("nih", root)
    assert [(f.label, f.box_xyxy) for f in fs] == [("nodule", (10.5, 20.25, 40.5, 60.25)),
                                                  ("infiltrate", (0.0, 0.0, 128.0, 64.0))]
    fs = load_source("nih", root, normals=True)
    assert fs[-1].label == "normal" and fs[-1].box_xyxy is None and len(fs) == 3  # 00000004 is not on disk
    recs = findings_to_records(fs)
    assert recs[-1].findings == [] and recs[0].modality == "X-ray"


@pytest.mark.parametrize("line,msg", [
    ("00000001_000.png,Fracture,1,1,5,5,,,", "unknown finding label 'Fracture'"),
    ("00000001_000.png,Mass,1,1,500,5,,,", "outside the 128x128"),
    ("00000001_000.png,Mass,a,1,5,5,,,", "not numeric"),
    ("00000001_000.png,Mass,1", "expected 6 columns"),
])
def test_nih_errors(tmp_path, line, msg):
    root = tmp_path / "nih"
    _png(root / "00000001_000.png", (128, 128))
    (root / "BBox_List_2017.csv").write_text(NIH_HEADER + "00000001_000.png,Mass,1,1,5,5,,,\n" + line + "\n")
    with pytest.raises(SourceFormatError, match=rf"BBox_List_2017\.csv:3: .*{msg}"):
        load_source("nih", root)
    assert len(load_source("nih", root, skip_bad=True).skipped) == 1


def test_nih_bad_header(tmp_path):
    (tmp_path / "BBox_List_2017.csv").write_text("name,label\n")
    with pytest.raises(SourceFormatError, match=r":1: expected header"):
        load_source("nih", tmp_path)


def _coco(images, anns, cats):
    return json.dumps({"images": images, "annotations": anns, "categories": cats})


def test_tbx11k(tmp_path):
    root = tmp_path / "TBX11K"
    _png(root / "imgs" / "tb" / "tb0001.png", (100, 80))
    _png(root / "imgs" / "tb" / "tb0002.png", (100, 80))
    cats = [{"id": 1, "name": "ActiveTuberculosis"}, {"id": 2, "name": "ObsoletePulmonaryTuberculosis"}]
    (root / "annotations" / "json").mkdir(parents=True)
    (root / "annotations" / "json" / "TBX11K_train_only_tb.json").write_text(_coco(
        [{"id": 7, "file_name": "tb0001.png", "width": 100, "height": 80}],
        [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 30]},
         {"id": 2, "image_id": 7, "category_id": 2, "bbox": [50, 5, 10, 10]}], cats))
    (root / "annotations" / "json" / "TBX11K_val_only_tb.json").write_text(_coco(
        [{"id": 1, "file_name": "tb/tb0002.png", "width": 100, "height": 80}],
        [{"id": 9, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}], cats))
    with pytest.raises(SourceFormatError, match=r"TBX11K_val_only_tb\.json: annotations\[0\] \(id=9\): category_id 3"):
        load_source("tbx11k", root)
    fs = load_source("tbx11k", root, skip_bad=True)
    assert [(f.label, f.box_xyxy, f.meta["split"]) for f in fs] == [
        ("active tuberculosis", (10.0, 10.0, 30.0, 40.0), "train"),
        ("obsolete tuberculosis", (50.0, 5.0, 60.0, 15.0), "train")]
    assert len(fs.skipped) == 1
    recs = findings_to_records(fs)
    assert len(recs) == 1 and len(recs[0].findings) == 2


def test_kvasir(tmp_path):
    root = tmp_path / "kvasir-seg"
    _png(root / "images" / "cju0qkwl35piu0993l0dewei2.jpg", (60, 50), "RGB")
    _png(root / "images" / "cju1.jpg", (60, 50), "RGB")
    data = {"cju0qkwl35piu0993l0dewei2": {"height": 50, "width": 60, "bbox": [
        {"label": "polyp", "xmin": 5, "ymin": 6, "xmax": 30, "ymax": 40}]},
        "cju1": {"height": 50, "width": 60, "bbox": [{"label": "polyp", "xmin": 5, "ymin": 6, "xmax": 70, "ymax": 9}]}}
    (root / "kavsir_bboxes.json").write_text(json.dumps(data))
    with pytest.raises(SourceFormatError, match=r"kavsir_bboxes\.json: entry 'cju1' bbox\[0\]: .*outside"):
        load_source("kvasir", root)
    fs = load_source("kvasir", root, skip_bad=True)
    assert [(f.label, f.box_xyxy, f.modality) for f in fs] == [("polyp", (5.0, 6.0, 30.0, 40.0), "endoscopy")]
    assert fs.skipped and "cju1" in fs.skipped[0]


def test_kidneystone_yolo(tmp_path):
    root = tmp_path / "ks"
    (root / "data.yaml").parent.mkdir(parents=True)
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['Tas_Var']\n")
    _png(root / "train" / "images" / "a_png.rf.1.jpg", (200, 100))
    _png(root / "valid" / "images" / "b_png.rf.2.jpg", (200, 100))
    (root / "train" / "labels").mkdir(parents=True)
    (root / "valid" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / "a_png.rf.1.txt").write_text("0 0.5 0.5 0.1 0.2\n0 0.25 0.25 0.1 0.1\n")
    (root / "valid" / "labels" / "b_png.rf.2.txt").write_text("")
    fs = load_source("kidneystone", root)
    assert [(f.label, f.box_xyxy, f.meta["split"]) for f in fs[:2]] == [
        ("kidney stone", pytest.approx((90, 40, 110, 60)), "train"),
        ("kidney stone", pytest.approx((40, 20, 60, 30)), "train")]
    assert fs[2].label == "normal" and fs[2].box_xyxy is None and fs[2].meta["split"] == "val"
    (root / "train" / "labels" / "a_png.rf.1.txt").write_text("0 0.5 0.5 0.1 0.2\n3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(SourceFormatError, match=r"a_png\.rf\.1\.txt:2: class index 3"):
        load_source("kidneystone", root)


def test_kidneystone_coco(tmp_path):
    root = tmp_path / "ks"
    _png(root / "test" / "c.jpg", (64, 64))
    (root / "test" / "_annotations.coco.json").write_text(_coco(
        [{"id": 0, "file_name": "c.jpg", "width": 64, "height": 64}],
        [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [4, 4, 8, 8]}],
        [{"id": 0, "name": "kidney-stones"}, {"id": 1, "name": "stone"}]))
    fs = load_source("kidneystone", root)
    assert [(f.label, f.box_xyxy, f.meta.get("split")) for f in fs] == [("kidney stone", (4.0, 4.0, 12.0, 12.0),
                                                                         "test")]


def test_paths_stay_inside_root(tmp_path):
    outside = _png(tmp_path / "secret" / "00000001_000.png", (128, 128))
    root = tmp_path / "nih"
    root.mkdir()
    os.symlink(outside.parent, root / "images")  # a symlinked folder leaving the root is not searched
    (root / "BBox_List_2017.csv").write_text(NIH_HEADER + "00000001_000.png,Mass,1,1,5,5,,,\n")
    with pytest.raises(SourceFormatError, match="not found"):
        load_source("nih", root)
    with pytest.raises(SourceFormatError, match="leaves the dataset root"):
        safe_join(root, "../secret/00000001_000.png")


def test_unknown_source_and_root(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        load_source("mimic", tmp_path)
    with pytest.raises(FileNotFoundError):
        load_source("nih", tmp_path / "nope")
    with pytest.raises(SourceFormatError, match="BBox_List_2017.csv not found"):
        load_source("nih", tmp_path)


def test_records_group_by_image_with_unique_ids():
    from umedfast.data import Finding

    fs = [Finding("kvasir", "/a/images/x.jpg", "endoscopy", "polyp", (1, 1, 5, 5), (10, 10)),
          Finding("kvasir", "/b/images/x.jpg", "endoscopy", "polyp", (1, 1, 5, 5), (10, 10)),
          Finding("kvasir", "/a/images/x.jpg", "endoscopy", "polyp", (6, 6, 9, 9), (10, 10))]
    recs = findings_to_records(fs)
    assert [r.id for r in recs] == ["kvasir-images-x", "kvasir-images-x-2"]
    assert len(recs[0].findings) == 2 and recs[0].split in ("train", "val", "test")
