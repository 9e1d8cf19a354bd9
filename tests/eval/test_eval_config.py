"""The run config: paths against the YAML's folder, renamed keys, CLI flags onto the same
loader, every registered encoder as a model kind, and `pretrained: false` giving random weights."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from openmusk.cli import main
from openmusk.core.config import ConfigError, load_config
from openmusk.eval.config import DatasetEntry, EvalConfig, ModelEntry, load_eval_config, model_kinds


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_relative_paths_resolve_against_the_yaml_not_hub_ids_or_names(tmp_path: Path) -> None:
    cfg_path = _write(tmp_path / "cfg" / "run.yaml", {
        "output_dir": "out", "cache_dir": "../cache",
        "models": [{"name": "a", "kind": "musk", "pretrained": "w/musk.safetensors"},
                   {"name": "b", "kind": "musk", "pretrained": "hf_hub:xiangjx/musk"},
                   {"name": "c", "kind": "open_clip", "model": "ViT-B-16", "pretrained": "openai"}],
        "datasets": [{"spec": "specs/mine.yaml", "root": "data"},
                     {"spec": "pcam", "root": str(tmp_path / "abs")}]})
    cfg = load_eval_config(cfg_path)
    base = tmp_path / "cfg"
    assert Path(cfg.output_dir) == base / "out" and Path(cfg.cache_dir) == base / ".." / "cache"
    assert Path(cfg.models[0].pretrained) == base / "w" / "musk.safetensors"
    assert cfg.models[1].pretrained == "hf_hub:xiangjx/musk" and cfg.models[2].pretrained == "openai"
    assert Path(cfg.datasets[0].spec) == base / "specs" / "mine.yaml"
    assert Path(cfg.datasets[0].root) == base / "data"
    assert cfg.datasets[1].spec == "pcam" and Path(cfg.datasets[1].root) == tmp_path / "abs"
    # each section class resolves its own paths when read from a file of its own
    entry = load_config(DatasetEntry, _write(tmp_path / "d" / "entry.yaml", {"spec": "s.yml", "root": "r"}))
    assert Path(entry.spec) == tmp_path / "d" / "s.yml" and Path(entry.root) == tmp_path / "d" / "r"
    model = load_config(ModelEntry, _write(tmp_path / "m" / "model.yaml",
                                           {"name": "t", "kind": "timm", "model": "vit", "pretrained": "x.pth"}))
    assert Path(model.pretrained) == tmp_path / "m" / "x.pth"
    # defaults are not in the file: relative to the working directory, as in every command
    cfg = load_eval_config(_write(tmp_path / "cfg2" / "run.yaml", {
        "models": [{"name": "a"}], "datasets": [{"spec": "pcam", "root": "."}]}))
    assert cfg.output_dir == "eval_results" and Path(cfg.cache_dir) == Path("eval_results") / "features"
    assert (cfg.device, cfg.precision) == ("auto", "auto")   # the shared defaults


def test_renamed_keys_and_old_factory_module_work_with_a_notice(tmp_path: Path, capsys) -> None:
    cfg = load_eval_config(_write(tmp_path / "run.yaml", {
        "models": [{"name": "a", "kind": "musk", "dtype": "bfloat16"},
                   {"name": "b", "kind": "factory", "factory": "openmusk.eval.encoders:color_stats_encoder"}],
        "datasets": [{"spec": "pcam", "root": "."}]}))
    assert cfg.models[0].precision == "bf16"
    assert cfg.models[1].factory == "openmusk.encoders:color_stats_encoder"
    err = capsys.readouterr().err
    assert "key 'dtype' is now spelled 'precision'" in err and "run.yaml: models[0]" in err
    assert "is now 'openmusk.encoders:color_stats_encoder'" in err
    with pytest.raises(ConfigError, match=r"run.yaml: models\[0\]: unknown key 'pretrianed'.*'pretrained'"):
        load_eval_config(_write(tmp_path / "run.yaml", {
            "models": [{"name": "a", "pretrianed": False}], "datasets": [{"spec": "pcam", "root": "."}]}))
    with pytest.raises(ConfigError, match=r"key 'batch_size' expects int, got 'big'"):
        load_eval_config(_write(tmp_path / "run.yaml", {
            "models": [{"name": "a"}], "datasets": [{"spec": "pcam", "root": "."}], "batch_size": "big"}))


def test_cli_flags_and_set_go_through_the_loader(tmp_path: Path, monkeypatch, capsys) -> None:
    import openmusk.eval.runner as runner

    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        return {"done": [], "skipped": [], "not_applicable": [], "failed": []}

    monkeypatch.setattr(runner, "run_eval", fake_run)
    path = _write(tmp_path / "run.yaml", {"models": [{"name": "a"}], "datasets": [{"spec": "pcam", "root": "."}]})
    assert main(["eval", "run", str(path), "--workers", "3", "--device", "cpu", "--precision", "fp32",
                 "--batch-size", "5", "--n-resamples", "7", "--set", "knn_k=3",
                 "--set", "output_dir=elsewhere"]) == 0
    cfg = seen["cfg"]
    assert (cfg.num_workers, cfg.device, cfg.precision, cfg.batch_size, cfg.n_resamples, cfg.knn_k) == \
        (3, "cpu", "fp32", 5, 7, 3)
    assert cfg.output_dir == "elsewhere" and cfg.cache_dir == str(Path("elsewhere") / "features")
    assert "--workers is now spelled --num-workers" in capsys.readouterr().err
    assert main(["eval", "run", "--example"]) == 0
    example = yaml.safe_load(capsys.readouterr().out)
    assert example["models"][0]["kind"] == "musk" and example["datasets"][0]["test_split"] == "test"


def test_every_registered_encoder_is_a_kind_and_the_device_follows_local_rank(tmp_path, monkeypatch) -> None:
    from openmusk.eval.runner import run_eval

    kinds = model_kinds()
    assert {"musk", "musk_singlescale", "open_clip", "timm", "hf", "color_stats", "factory"} <= set(kinds)
    with pytest.raises(ValueError, match="kind 'keras' is not one of"):
        ModelEntry(name="x", kind="keras")
    with pytest.raises(ValueError, match="kind timm needs model"):
        ModelEntry(name="x", kind="timm")
    devices = []

    def build(self, device, precision=None):
        devices.append((device, precision))
        raise RuntimeError("not built in this test")

    monkeypatch.setattr(ModelEntry, "build", build)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = EvalConfig(models=[ModelEntry(name="a")], datasets=[DatasetEntry(spec="pcam", root=".")],
                     output_dir=str(tmp_path / "out"))
    summary = run_eval(cfg, progress=False)
    assert devices == [(torch.device("cuda", 1), "auto")] and len(summary["failed"]) == 3  # pcam: probe, few-shot, knn


@pytest.fixture()
def fake_timm(monkeypatch):
    """A stand-in ``timm`` (not installable here) recording what ``create_model`` was asked."""
    calls = []

    def create_model(name, pretrained=False, num_classes=None, **kwargs):
        calls.append({"name": name, "pretrained": pretrained, **kwargs})
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))

    data = types.SimpleNamespace(resolve_data_config=lambda cfg, model=None: {},
                                 create_transform=lambda **cfg: (lambda img: torch.zeros(3, 8, 8)))
    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model, data=data))
    return calls


def test_pretrained_false_gives_random_timm_weights(fake_timm, tmp_path: Path) -> None:
    def built(pretrained):
        fake_timm.clear()
        ModelEntry(name="t", kind="timm", model="vit_small_patch16_224", pretrained=pretrained).build("cpu")
        return fake_timm[0]

    assert built(False)["pretrained"] is False          # loaded WITH weights before this was fixed
    assert built("false")["pretrained"] is False
    assert built(None)["pretrained"] is False            # unset: random, as it always was
    assert built(True)["pretrained"] is True
    assert built("hf-hub:MahmoodLab/uni")["pretrained"] is True   # the name says which weights
    call = built(str(tmp_path / "uni.safetensors"))
    assert call["pretrained"] is True and call["pretrained_cfg_overlay"] == {"file": str(tmp_path / "uni.safetensors")}
    cfg = load_eval_config(_write(tmp_path / "run.yaml", {
        "models": [{"name": "t", "kind": "timm", "model": "vit", "pretrained": False}],
        "datasets": [{"spec": "pcam", "root": "."}]}))
    fake_timm.clear()
    cfg.models[0].build("cpu")
    assert fake_timm[0]["pretrained"] is False


def test_pretrained_false_gives_random_open_clip_weights(monkeypatch) -> None:
    calls = []

    def create_model_and_transforms(name, pretrained=None, device=None):
        calls.append(pretrained)
        return torch.nn.Linear(2, 2), None, None

    monkeypatch.setitem(sys.modules, "open_clip", types.SimpleNamespace(
        create_model_and_transforms=create_model_and_transforms, get_tokenizer=lambda name: None))
    ModelEntry(name="c", kind="open_clip", model="ViT-B-16", pretrained=False).build("cpu")
    ModelEntry(name="c", kind="open_clip", model="ViT-B-16", pretrained="openai").build("cpu")
    assert calls == [None, "openai"]                      # None: open_clip's random init
    with pytest.raises(ValueError, match="always loads its hub weights"):
        ModelEntry(name="c", kind="open_clip", model="hf-hub:MahmoodLab/conch", pretrained=False).build("cpu")


def test_pretrained_false_gives_random_musk_weights(tmp_path: Path) -> None:
    from openmusk.model import create_model, save_checkpoint

    torch.manual_seed(0)
    saved = create_model("musk_tiny_patch16_384")
    save_checkpoint(saved, tmp_path / "tiny.safetensors")
    ref = saved.state_dict()

    def max_diff(entry: ModelEntry) -> float:
        state = entry.build("cpu").model.state_dict()
        return max(float((state[k].float() - ref[k].float()).abs().max()) for k in ref if ref[k].is_floating_point())

    loaded = ModelEntry(name="m", kind="musk", model="musk_tiny_patch16_384", pretrained=str(tmp_path / "tiny.safetensors"))
    assert max_diff(loaded) == 0.0
    for pretrained in (False, None):
        random = ModelEntry(name="m", kind="musk", model="musk_tiny_patch16_384", pretrained=pretrained)
        assert max_diff(random) > 1e-3
    assert ModelEntry(name="m", kind="musk_singlescale", pretrained=True).encoder_args() == ("musk_singlescale", {})


def test_pretrained_false_gives_random_hf_weights(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    saved = transformers.ViTModel(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=16))
    saved.save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    ref = saved.state_dict()

    def max_diff(pretrained) -> float:
        entry = ModelEntry(name="v", kind="hf", model=str(tmp_path / "vit"), pretrained=pretrained)
        state = entry.build("cpu").model.model.state_dict()
        return max(float((state[k] - ref[k]).abs().max()) for k in ref if ref[k].is_floating_point())

    assert max_diff(None) == 0.0 and max_diff(True) == 0.0   # the folder's weights
    assert max_diff(False) > 1e-3
