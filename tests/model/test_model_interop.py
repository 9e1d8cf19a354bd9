"""Other tools' habits on our model: the hub's two spellings and revisions (a real huggingface_hub
cache, offline), the authors' weight cache and loader (TRIDENT's path), open_clip's entry points
and tokenizer. timm's interface: test_timm_registry.py."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import openmusk
from openmusk.model.hub import parse_hub

TINY = "musk_tiny_patch16_32"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and a HOME with no authors' cache: nothing can come from elsewhere."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _hub_entry(cache: str, repo: str, src: str, commit: str, refs: tuple[str, ...]) -> str:
    """One snapshot laid out as hf_hub_download leaves it: blob by hash, snapshot symlink, refs."""
    data = open(src, "rb").read()
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    blob = os.path.join(root, "blobs", hashlib.sha256(data).hexdigest())
    snap = os.path.join(root, "snapshots", commit)
    for d in (os.path.dirname(blob), snap, os.path.join(root, "refs")):
        os.makedirs(d, exist_ok=True)
    with open(blob, "wb") as f:
        f.write(data)
    os.symlink(os.path.relpath(blob, snap), os.path.join(snap, "model.safetensors"))
    for ref in refs:
        with open(os.path.join(root, "refs", ref), "w") as f:
            f.write(commit)
    return os.path.join(snap, "model.safetensors")


def test_hub_spellings_and_revisions_from_a_real_cache_offline(offline, tmp_path, tiny_file):
    from huggingface_hub import hf_hub_download

    cache = str(tmp_path / "hub")
    main_sha, v1_sha = "a" * 40, "b" * 40
    main = _hub_entry(cache, "lab/musk-tiny", tiny_file, main_sha, ("main",))
    other = tmp_path / "other.safetensors"
    sd = load_file(tiny_file)
    sd["logit_scale"] = torch.tensor(1.25)
    save_file(sd, str(other))
    v1 = _hub_entry(cache, "lab/musk-tiny", str(other), v1_sha, ("v1",))
    for spelling in ("hf_hub:", "hf-hub:"):
        assert openmusk.resolve_weights(f"{spelling}lab/musk-tiny", cache_dir=cache) == main
        for rev in ("v1", v1_sha):   # a branch/tag name and a commit hash
            got = openmusk.resolve_weights(f"{spelling}lab/musk-tiny@{rev}", cache_dir=cache)
            assert got == v1 and os.path.samefile(got, hf_hub_download(
                "lab/musk-tiny", "model.safetensors", revision=rev, cache_dir=cache))
        assert openmusk.weights_available(f"{spelling}lab/musk-tiny@v1/model.safetensors", cache_dir=cache)
    # the revision's weights are the ones loaded, through the default hub cache as well
    from huggingface_hub import constants
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", cache)
        model = openmusk.create_model("hf-hub:lab/musk-tiny@v1")
    assert model.config == openmusk.get_config(TINY) and float(model.logit_scale.detach()) == 1.25
    # a revision that is not there: our error with the advice, never a raw huggingface_hub error
    with pytest.raises(openmusk.WeightsNotFoundError) as err:
        openmusk.resolve_weights("hf-hub:lab/musk-tiny@v2", cache_dir=cache)
    assert "at revision v2" in str(err.value) and "hf auth login" in str(err.value)
    for bad in ("hf_hub:lab/musk tiny@v1", "hf_hub:lab", "hf-hub:lab/musk-tiny@"):
        with pytest.raises(ValueError, match="hf_hub:owner/name") as err:
            openmusk.resolve_weights(bad, cache_dir=cache)
        assert type(err.value) is ValueError
    assert parse_hub("hf_hub:o/n@refs/pr/3/sub/w.pth") == parse_hub("hf-hub:o/n/sub/w.pth@refs/pr/3")
    assert parse_hub("hf_hub:o/n@refs/pr/3/sub/w.pth").revision == "refs/pr/3"


def test_the_authors_weight_cache_is_found_and_only_when_it_is_musk(offline, tmp_path, tiny_file, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))   # nothing in the hub cache
    assert not openmusk.weights_available()     # the demo's test: falls back to random weights
    with pytest.raises(openmusk.WeightsNotFoundError, match="hf auth login"):
        openmusk.resolve_weights()
    cached = tmp_path / "home" / ".cache" / "model.safetensors"   # where the authors' loader puts it
    cached.parent.mkdir(parents=True)
    save_file({"weight": torch.zeros(2)}, str(cached))             # another model's file: not taken
    assert not openmusk.weights_available()
    cached.write_bytes(open(tiny_file, "rb").read())
    assert openmusk.weights_available(openmusk.DEFAULT_WEIGHTS)    # the demo now uses the real weights
    assert openmusk.resolve_weights("hf-hub:xiangjx/musk") == str(cached)
    model = openmusk.create_model_from_pretrained(return_transform=False)   # the released weights, by default
    assert torch.equal(model.vision_head.weight, load_file(tiny_file)["vision_head.weight"])
    assert not openmusk.weights_available("hf_hub:xiangjx/musk@v2")          # another revision: not this file


def test_the_authors_loader_procedure_loads_our_model_exactly(tiny_file):
    """The authors' ``utils.load_model_and_may_interpolate`` (TRIDENT's MUSK path), step by step as
    their source reads our model: ``vision_embed.num_patches`` and ``num_position_embeddings()`` set
    the extra rows, the patch rows are interpolated bicubic in float, and every module loads its
    tensors through ``_load_from_state_dict``; the result equals our own loader's."""
    config = openmusk.get_config(TINY)
    config.img_size = 64                                     # checkpoint at 32 px, model at 64 px
    theirs = openmusk.Musk(config)
    sd = load_file(tiny_file)
    ve = theirs.beit3.vision_embed
    num_patches = ve.num_patches
    extra = ve.num_position_embeddings() + 2 - num_patches
    assert (num_patches, extra, ve.patch_shape) == (16, 3, (4, 4))
    table = sd["beit3.encoder.embed_positions.A.weight"]
    orig = int((table.shape[-2] - extra) ** 0.5)
    new = int(num_patches ** 0.5)
    assert (orig, new) == (2, 4)
    rows = table[extra:].reshape(-1, orig, orig, table.shape[-1]).permute(0, 3, 1, 2)
    rows = torch.nn.functional.interpolate(rows.float(), size=(new, new), mode="bicubic", align_corners=False)
    sd["beit3.encoder.embed_positions.A.weight"] = torch.cat(
        [table[:extra].unsqueeze(0), rows.permute(0, 2, 3, 1).flatten(1, 2)], dim=1).squeeze(0)
    missing, unexpected, errors = [], [], []

    def load(module, prefix=""):
        module._load_from_state_dict(sd, prefix, {}, True, missing, unexpected, errors)
        for name, child in module._modules.items():
            if child is not None:
                load(child, prefix + name + ".")

    load(theirs)
    assert (missing, errors) == ([], [])
    ours = openmusk.load_checkpoint(openmusk.Musk(config), tiny_file)
    for k, v in ours.state_dict().items():
        assert torch.allclose(theirs.state_dict()[k], v, atol=1e-6), k


def test_open_clip_entry_points_and_tokenizer(tiny_file):
    assert TINY in openmusk.list_models()
    for name, tag in openmusk.list_pretrained():
        assert name in openmusk.list_models() and tag.startswith("hf_hub:")
    model, train_tf, val_tf = openmusk.create_model_and_transforms(TINY, pretrained=tiny_file)
    from PIL import Image
    img = Image.new("RGB", (50, 40), (200, 120, 160))
    assert train_tf(img).shape == val_tf(img).shape == (3, 32, 32)
    m2, pre = openmusk.create_model_from_pretrained(TINY, pretrained=tiny_file)
    assert torch.equal(m2.vision_head.weight, model.vision_head.weight)
    with pytest.raises(ValueError, match="unknown model"):
        openmusk.create_model_and_transforms("ViT-B-16")
    tok = openmusk.get_tokenizer(TINY)                        # a model name, not a path
    assert tok is openmusk.get_tokenizer() is openmusk.get_tokenizer("hf-hub:xiangjx/musk")
    with pytest.raises(FileNotFoundError, match="MUSK model name"):
        openmusk.get_tokenizer("ViT-B-16")
    texts = ["tumour", "stroma with lymphocytes and vessels"]
    batch = tok(texts, max_len=16)
    ids, pad = batch                                          # still unpacks as before
    with torch.no_grad():
        right = model.encode_text(ids, pad)
        assert torch.equal(model.encode_text(batch.to("cpu")), right)   # open_clip: tokenizer output as is
        inferred = model.encode_text(ids)                      # no mask: padding read from <pad> ids
        assert torch.allclose(inferred, right, atol=1e-6)
        attended = model.encode_text(ids, torch.zeros_like(pad))  # what attending the padding gives
        assert not torch.allclose(attended[0], right[0], atol=1e-3)
        assert torch.allclose(model.encode_text_tokens(ids)[:, 0], model.encode_text_tokens(ids, pad)[:, 0], atol=1e-6)
