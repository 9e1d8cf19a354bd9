"""The released checkpoint's key layout, on the meta device (no memory spent on weights)."""
import json

import torch

import openmusk


def test_large_config_has_exactly_the_released_names_and_shapes(parity_dir):
    released = json.loads((parity_dir / "musk_large_patch16_384_keys.json").read_text())
    with torch.device("meta"):
        model = openmusk.Musk(openmusk.get_config("musk_large_patch16_384"))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(released) == 974
    assert ours == released
    assert sum(p.numel() for p in model.parameters()) == 675_188_737
