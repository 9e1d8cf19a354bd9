"""``openmusk embed``, ``zeroshot`` and ``info`` end to end on real images: each gives what the
library call it wraps gives."""
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import openmusk
from openmusk.cli import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    openmusk.save_checkpoint(openmusk.create_model("musk_tiny_patch16_384"), path)
    return str(path)


def test_embed_images_skips_and_reports_unreadable(tmp_path, real_dir, weights):
    folder = tmp_path / "imgs"
    folder.mkdir()
    nest = Image.open(real_dir / "hgsc_nest.jpg").convert("RGB")
    nest.crop((0, 0, 500, 500)).save(folder / "a.png")
    nest.crop((500, 500, 1000, 1000)).save(folder / "b.jpg")
    (folder / "c.png").write_bytes(b"not an image")
    out = tmp_path / "f.h5"
    assert main(["embed", "images", str(folder), "--out", str(out), "--weights", weights,
                 "--workers", "0", "--batch-size", "2", "--quiet"]) == 0
    with h5py.File(out) as f:
        names = [n.decode() for n in f["names"][:]]
        feats = f["features"][:]
    assert [n.rsplit("/", 1)[1] for n in names] == ["a.png", "b.jpg"]
    assert feats.shape == (2, 64) and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    errors = (tmp_path / "f.h5.errors.csv").read_text()
    assert "c.png" in errors and "cannot read image" in errors
    # the same embedding as the Python API on the same image
    model = openmusk.create_model(pretrained=weights)
    with torch.no_grad():
        api = model.encode_image(openmusk.get_transform()(Image.open(folder / "a.png")).unsqueeze(0))
    assert np.allclose(feats[0], api[0].numpy(), atol=1e-5)


def test_embed_images_multiscale_and_raw_features(tmp_path, real_dir, weights):
    image = real_dir / "he_tumor_1000px.png"
    x = openmusk.get_transform()(Image.open(image)).unsqueeze(0)
    model = openmusk.create_model(pretrained=weights)
    out = tmp_path / "ms.h5"
    assert main(["embed", "images", str(image), "--out", str(out), "--weights", weights,
                 "--num-workers", "0", "--multiscale", "--raw", "--quiet"]) == 0
    with h5py.File(out) as f:
        assert f["features"].attrs["kind"] == "multiscale" and f["features"].attrs["feature_kind"] == "probe"
        with torch.no_grad():
            ref = model.encode_image(x, head=False, normalize=False, multiscale=True)
        assert np.allclose(f["features"][:], ref.numpy(), atol=1e-4)
    # --raw alone: the single-scale CLS before the head, unnormalised
    assert main(["embed", "images", str(image), "--out", str(out), "--weights", weights,
                 "--num-workers", "0", "--raw", "--quiet"]) == 0
    with h5py.File(out) as f, torch.no_grad():
        ref = model.encode_image(x, head=False, normalize=False)
        assert np.allclose(f["features"][:], ref.numpy(), atol=1e-4)
        assert f["features"].attrs["kind"] == "embedding" and not f["features"].attrs["normalized"]


def test_embed_images_with_another_encoder_records_it(tmp_path, real_dir):
    from openmusk.data.features_h5 import read_encoder_info
    from openmusk.encoders import load_encoder

    out = tmp_path / "c.h5"
    image = real_dir / "hgsc_nest.jpg"
    assert main(["embed", "images", str(image), "--out", str(out), "--encoder", "color_stats",
                 "--num-workers", "0", "--quiet"]) == 0
    info = read_encoder_info(out)
    assert info["encoder"] == "color_stats" and info["feature_kind"] == "embed"
    enc = load_encoder("color_stats")
    ref = enc.encode_image(enc.transform(Image.open(image).convert("RGB")).unsqueeze(0))
    with h5py.File(out) as f:
        assert np.allclose(f["features"][:], ref.numpy(), atol=1e-6)
    # an image-only encoder cannot embed texts; a wrong name is named with the known ones
    (tmp_path / "t.txt").write_text("tumour\n")
    assert main(["embed", "texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "t.h5"),
                 "--encoder", "color_stats", "--quiet"]) == 2
    assert main(["embed", "images", str(image), "--out", str(out), "--encoder", "colour_stats"]) == 2


def test_embed_texts_from_csv(tmp_path, weights):
    csv_path = tmp_path / "reports.csv"
    csv_path.write_text('id,text\n1,"Invasive ductal carcinoma, grade 3."\n2,Benign skin.\n')
    out = tmp_path / "t.h5"
    assert main(["embed", "texts", str(csv_path), "--out", str(out), "--weights", weights, "--quiet"]) == 0
    with h5py.File(out) as f:
        assert [t.decode() for t in f["texts"][:]] == ["Invasive ductal carcinoma, grade 3.", "Benign skin."]
        feats = f["features"][:]
    model = openmusk.create_model(pretrained=weights)
    ids, pad = openmusk.get_tokenizer()(["Benign skin."])
    with torch.no_grad():
        assert np.allclose(feats[1], model.encode_text(ids, pad)[0].numpy(), atol=1e-5)
    assert main(["embed", "texts", str(csv_path), "--column", "report", "--out", str(out),
                 "--weights", weights]) == 2


def test_zeroshot_prints_ranked_probabilities(real_dir, weights, capsys):
    assert main(["zeroshot", str(real_dir / "hgsc_nest.jpg"), "--labels", "tumor,stroma,fat",
                 "--weights", weights]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "%" in line]
    probs = [float(line.split("%")[0]) for line in lines]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert abs(sum(probs) - 100) < 0.1


def test_info_checks_keys(tmp_path, weights, parity_dir, capsys):
    assert main(["info", weights]) == 0
    out = capsys.readouterr().out
    assert "'embed_dim': 64" in out and "key check:  OK" in out
    from safetensors.torch import load_file, save_file
    sd = load_file(str(parity_dir / "tiny_musk.safetensors"))
    sd["surplus"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    assert main(["info", str(tmp_path / "bad.safetensors")]) == 1
    assert "unexpected: surplus" in capsys.readouterr().out


def test_missing_weights_give_advice_not_a_traceback(tmp_path, real_dir):
    r = subprocess.run([sys.executable, "-m", "openmusk", "zeroshot", str(real_dir / "hgsc_nest.jpg"),
                        "--labels", "a,b", "--weights", "hf_hub:xiangjx/musk"],
                       capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path),
                                                            "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    assert "hf auth login" in r.stderr and "Traceback" not in r.stderr
