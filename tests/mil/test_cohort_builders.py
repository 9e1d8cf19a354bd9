"""Cohort builders read small replicas of the files as TCGA, VisioMel and BCNB publish them."""
from __future__ import annotations

import pandas as pd
import pytest

from openmusk.cli import main
from openmusk.mil.cohorts import bcnb_cohort, tcga_cohort, visiomel_cohort
from openmusk.mil.cohort import read_cohort


@pytest.fixture
def tcga(tmp_path):
    """TCGA-CDR sheet (Excel, unnamed index column, '#N/A' cells), slide files and TCGA-Reports."""
    cdr = pd.DataFrame({
        "Unnamed: 0": [1, 2, 3, 4],
        "bcr_patient_barcode": ["TCGA-A1-A0SB", "TCGA-A2-A04P", "TCGA-05-4244", "TCGA-BP-5195"],
        "type": ["BRCA", "BRCA", "LUAD", "KIRC"], "age_at_initial_pathologic_diagnosis": [70, 37, 70, 61],
        "gender": ["FEMALE", "FEMALE", "MALE", "MALE"],
        "ajcc_pathologic_tumor_stage": ["Stage I", "Stage IIIC", "Stage IV", "Stage II"],
        "OS": [0, 1, 1, 0], "OS.time": [259, 548, 0, 3000], "DSS": [0, 1, "#N/A", 0],
        "DSS.time": [259, 548, "#N/A", 3000]})
    with pd.ExcelWriter(tmp_path / "TCGA-CDR-SupplementalTableS1.xlsx") as w:
        cdr.drop(columns="Unnamed: 0").to_excel(w, sheet_name="TCGA-CDR")
        pd.DataFrame({"note": ["x"]}).to_excel(w, sheet_name="ExtraEndpoints")
    slides = tmp_path / "slides" / "BRCA"
    slides.mkdir(parents=True)
    for name in ("TCGA-A1-A0SB-01Z-00-DX1.B34C267B-CAAA-4AB6-AD5C-276C26F997A1.svs",
                 "TCGA-A1-A0SB-01A-01-TS1.0A2E2B9C-0D3B-4A4D-9F58-2C8C7F6E3D11.svs",
                 "TCGA-A2-A04P-01Z-00-DX1.6A2A1F4E-3B1C-4F0B-8A45-0D7E6A1B2C3D.svs",
                 "TCGA-A2-A04P-01Z-00-DX2.7B3B2F5E-4C2D-4F1C-9B56-1E8F7B2C3D4E.svs",
                 "TCGA-05-4244-01Z-00-DX1.d4ff32cd-38cf-40ea-8213-45c2b100ac01.svs"):
        (slides / name).write_bytes(b"")
    pd.DataFrame({"patient_filename": ["TCGA-A1-A0SB.25c0b433-5557-4165-922e-2c1eac9c26f0",
                                       "TCGA-A2-A04P.f1b3c2d4-1111-2222-3333-444455556666"],
                  "text": ["Invasive ductal carcinoma, 1.5 cm, nodes negative.", "  "]}
                 ).to_csv(tmp_path / "TCGA_Reports.csv", index=False)
    return tmp_path


def test_tcga_dss_with_slides_and_reports(tcga, capsys):
    df = tcga_cohort(tcga / "TCGA-CDR-SupplementalTableS1.xlsx", tcga / "slides", endpoint="DSS")
    assert list(df["patient_id"]) == ["TCGA-A1-A0SB", "TCGA-A2-A04P"]  # LUAD: DSS '#N/A'; KIRC: no slide
    assert df.loc[1, "slide_id"] == ("TCGA-A2-A04P-01Z-00-DX1.6A2A1F4E-3B1C-4F0B-8A45-0D7E6A1B2C3D;"
                                     "TCGA-A2-A04P-01Z-00-DX2.7B3B2F5E-4C2D-4F1C-9B56-1E8F7B2C3D4E")
    assert "TS1" not in df.loc[0, "slide_id"] and list(df["event"]) == [0, 1] and list(df["time"]) == [259, 548]
    assert list(df["project"]) == ["BRCA", "BRCA"] and "ajcc_pathologic_tumor_stage" in df
    out = tcga / "cohort.csv"
    assert main(["mil", "cohort", "tcga", "--clinical", str(tcga / "TCGA-CDR-SupplementalTableS1.xlsx"),
                 "--slides", str(tcga / "slides"), "--reports", str(tcga / "TCGA_Reports.csv"),
                 "--out", str(out)]) == 0
    assert "1 patients" in capsys.readouterr().out  # the blank report drops TCGA-A2-A04P
    records, _ = read_cohort(out, "survival", need_report=True)   # what `mil train` reads
    assert records[0].report.startswith("Invasive ductal") and records[0].time == 259
    assert len(tcga_cohort(tcga / "TCGA-CDR-SupplementalTableS1.xlsx", tcga / "slides", endpoint="OS",
                           projects=["LUAD"])) == 1
    with pytest.raises(ValueError, match="endpoint 'XYZ'"):
        tcga_cohort(tcga / "TCGA-CDR-SupplementalTableS1.xlsx", tcga / "slides", endpoint="xyz")


def test_visiomel_clinical_variables_become_report_text(tmp_path):
    pd.DataFrame({"filename": ["1u4lhlqb.tif", "inl4skus.tif", "aeg15vcz.tif"], "age": ["[70:72[", "[40:42[", "[58:60["],
                  "sex": [1, 2, 2], "body_site": ["trunk", "arm", "face"], "melanoma_history": ["NO", None, "YES"],
                  "breslow": ["[1 : 2[", "<0.8", ">=4"], "ulceration": ["YES", "NO", "YES"],
                  "resolution": [0.2526, 0.2526, 0.4990], "tif_cksum": ["1", "2", "3"]}
                 ).to_csv(tmp_path / "train_metadata.csv", index=False)
    pd.DataFrame({"filename": ["1u4lhlqb.tif", "inl4skus.tif", "aeg15vcz.tif"], "relapse": [1, 0, 0]}
                 ).to_csv(tmp_path / "train_labels.csv", index=False)
    df = visiomel_cohort(tmp_path / "train_metadata.csv", tmp_path / "train_labels.csv", out=tmp_path / "c.csv")
    assert list(df["slide_id"]) == ["1u4lhlqb", "inl4skus", "aeg15vcz"] and list(df["label"]) == [1, 0, 0]
    assert df.loc[0, "report"] == ("Primary cutaneous melanoma of the trunk. Breslow thickness [1 : 2[ mm. "
                                   "Ulceration: YES. Patient age [70:72[ years, sex code 1. Previous melanoma: NO.")
    assert "Previous melanoma: not recorded." in df.loc[1, "report"]
    records, classes = read_cohort(tmp_path / "c.csv", "classification", need_report=True)
    assert classes == ["0", "1"] and len(records) == 3


def test_bcnb_biomarker_status_from_the_published_sheet(tmp_path):
    sheet = pd.DataFrame({"Patient ID": [1, 2, 3], "Age(years)": [44, 63, 51], "Tumour Size(cm)": [2.1, 3.5, 1.2],
                          "Tumour Type": ["Invasive ductal carcinoma"] * 3, "ER": ["Positive", "Negative", "Positive"],
                          "PR": ["Positive", "Negative", "Negative"], "HER2": ["Negative", "Positive", "Negative"],
                          "HER2 Expression": ["1+", "3+", "0"], "Histological grading": [2, 3, 1],
                          "Surgical": ["Modified radical mastectomy"] * 3, "Ki67": [0.2, 0.6, 0.1],
                          "Molecular subtype": ["Luminal B", "HER2(+)", "Luminal A"],
                          "Number of lymph node metastases": [0, 3, 1], "ALN status": ["N0", "N+(>2)", "N+(1-2)"]})
    sheet.to_excel(tmp_path / "patient-clinical-data.xlsx", index=False)
    df = bcnb_cohort(tmp_path / "patient-clinical-data.xlsx", "her2")
    assert list(df["patient_id"]) == ["1", "2", "3"] and list(df["label"]) == ["negative", "positive", "negative"]
    assert list(df["slide_id"]) == ["1", "2", "3"] and "ALN status" in df
    sheet.loc[1, "ER"] = "Equivocal"
    sheet.to_excel(tmp_path / "bad.xlsx", index=False)
    with pytest.raises(ValueError, match="row 3: ER is 'Equivocal'"):
        bcnb_cohort(tmp_path / "bad.xlsx", "ER")
