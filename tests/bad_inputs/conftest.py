"""Bad inputs built by the tests: 16-bit images, a decompression bomb, hostile shards, and a runner
that checks the CLI's answer is ONE line naming the culprit, with no traceback."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_files import png_bomb, sixteen_bit_gradient

@dataclass
class CliResult:
    """Exit code and captured streams of one in-process ``openmusk`` call."""

    code: int
    out: str
    err: str

    def clear_error(self, *culprits: str) -> str:
        """Assert exit code 2 and one error line naming every culprit, without a traceback."""
        assert self.code == 2, (self.code, self.err)
        assert "Traceback" not in self.err and "Traceback" not in self.out
        lines = [line for line in self.err.splitlines() if "error:" in line]
        assert len(lines) == 1, self.err
        for c in culprits:
            assert c in lines[0], (c, lines[0])
        return lines[0]


@pytest.fixture
def cli(capsys):
    """Run ``openmusk ARGS`` in this process (argparse errors included) and capture its output."""
    from openmusk.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse refuses a flag with exit code 2
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory) -> dict[str, Path]:
    """16-bit PNG (PIL opens it as I;16 or I), big-endian 16-bit TIFF (I;16B), 32-bit float TIFF,
    a decompression bomb and a truncated JPEG."""
    import tifffile

    root = tmp_path_factory.mktemp("bad_images")
    arr = sixteen_bit_gradient()
    Image.fromarray(arr).save(root / "grey16.png")
    tifffile.imwrite(root / "grey16_be.tif", arr.astype(">u2"))
    tifffile.imwrite(root / "float.tif", (arr / 65535.0).astype(np.float32))
    png_bomb(root / "bomb.png")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(root / "good.jpg")
    (root / "truncated.jpg").write_bytes((root / "good.jpg").read_bytes()[:200])
    return {p.stem: p for p in root.iterdir()}
