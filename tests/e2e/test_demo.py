"""``openmusk demo`` end to end on the shipped slide with the random tiny model."""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from PIL import Image

from openmusk.cli import main


@pytest.mark.slow
def test_demo_writes_an_honest_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--weights", "random", "--overlap", "0.25", "--device", "cpu",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOMLY INITIALISED" in printed                       # loud in the terminal
    page = (out / "report.html").read_text()
    assert "RANDOMLY INITIALISED" in page and "class='warn'" in page  # and in the report
    for src in re.findall(r"src=['\"]([^'\"]+)['\"]", page):      # every image it shows exists
        assert (out / src).is_file(), src
    assert {"thumbnail.png", "tissue_mask.png", "tiles.png", "heatmap_epidermis.png", "top_dermis.png"} <= {
        p.name for p in out.iterdir()}
    # the viewer: linked from the report, its pyramid, overlays and OpenSeadragon (licence kept) beside it
    assert "href=\"viewer.html\"" in page
    viewer = (out / "viewer.html").read_text()
    for name in ("openseadragon/openseadragon.min.js", "openseadragon/LICENSE.txt", "slide.dzi",
                 "slide_files/0/0_0.jpeg", *(f"overlays/{c}.png" for c in ("epidermis", "dermis", "adipose", "background"))):
        assert (out / name).is_file(), name
    assert '"overlays/dermis.png"' in viewer and '"Width": "2220"' in viewer
    assert "the probability 0-1" in page and Image.open(out / "top_dermis.png").size[0] == 5 * 256

    with h5py.File(out / "features" / "cmu_small_region.h5") as f:
        feats, coords = f["features"][:], f["coords"][:]
        assert feats.shape[1] == 128 and f["features"].attrs["encoder_weights"] == "random"
        assert f["features"].attrs["encoder"] == "musk" and "musk_tiny_patch16_384" in f["features"].attrs["encoder_spec"]
    table = pd.read_csv(out / "tile_scores.csv")
    classes = ["epidermis", "dermis", "adipose", "background"]
    np.testing.assert_array_equal(table[["x", "y"]].to_numpy(), coords)
    probs = table[classes].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (table["class"].to_numpy() == np.array(classes)[probs.argmax(1)]).all()
    # the table's per-class share of tiles is the share of argmax labels
    share = {c: (table["class"] == c).mean() * 100 for c in classes}
    for c in classes:
        assert f"<td>{c}</td><td>{share[c]:.1f}%</td>" in page


def test_zero_shot_from_features_equals_the_head_embedding() -> None:
    """The demo's shortcut: vision_head(first D values of the multiscale feature) = encode_image()."""
    import openmusk
    from openmusk.slide.demo import zero_shot_tiles

    torch.manual_seed(0)
    model = openmusk.create_model("musk_tiny_patch16_384")
    x = torch.randn(2, 3, 384, 384)
    text = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    with torch.no_grad():
        feats = model.encode_image(x, head=False, normalize=False, multiscale=True).numpy()
        ref = model.similarity(model.encode_image(x), text).softmax(-1).numpy()
    np.testing.assert_allclose(zero_shot_tiles(model, feats, text), ref, atol=1e-5)


def test_demo_old_flag_spellings_still_parse(capsys: pytest.CaptureFixture) -> None:
    from openmusk.cli import build_parser

    args = build_parser().parse_args(["demo", "--random-weights", "--no-progress", "--workers", "1"])
    assert (args.weights, args.quiet, args.num_workers, args.precision, args.device) == ("random", True, 1, None, None)
    err = capsys.readouterr().err
    assert "--random-weights is now spelled --weights random" in err and "--no-progress is now spelled --quiet" in err


def test_demo_classes_from_labels_or_a_prompts_file(tmp_path: Path, monkeypatch, capsys) -> None:
    import openmusk.slide.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.update(kw) or (_ for _ in ()).throw(ValueError("stop")))
    assert main(["demo", "--labels", "tumour, stroma,necrosis", "--out", str(tmp_path / "a")]) == 2
    assert seen["prompts"] == {"tumour": ["tumour"], "stroma": ["stroma"], "necrosis": ["necrosis"]}
    assert seen["templates"] is None                              # generic templates, no skin wording
    prompts = tmp_path / "p.yaml"
    prompts.write_text("classes:\n  carcinoma: [invasive carcinoma, tumour cells]\n  stroma: stroma\n"
                       "templates: ['an H&E image of {c}.']\n")
    assert main(["demo", "--prompts", str(prompts), "--out", str(tmp_path / "b")]) == 2
    assert seen["prompts"] == {"carcinoma": ["invasive carcinoma", "tumour cells"], "stroma": ["stroma"]}
    assert seen["templates"] == ["an H&E image of {c}."]
    capsys.readouterr()
    prompts.write_text("only: [one class]\n")
    assert main(["demo", "--prompts", str(prompts)]) == 2
    assert "p.yaml: expected at least two classes" in capsys.readouterr().err
    assert main(["demo", "--labels", "tumour"]) == 2
    assert "at least two distinct" in capsys.readouterr().err
    assert demo.GENERIC_TEMPLATES and all("skin" not in t for t in demo.GENERIC_TEMPLATES)
