"""Whole-slide pipeline speed on the real SVS slide: overhead over the bare model, tile reading.

Measured in one run:
1. Tile reading throughput (OpenSlide read at 0.5 µm/px + resize, in a DataLoader) with 0, 1 and
   2 worker processes, tiles/s.
2. End to end `extract_slide` (segmentation, tiling, reading in workers, multiscale encoding, HDF5
   writing) in tiles/s, versus the model's forward alone on the same number of already-decoded
   tiles: the ratio is the pipeline's overhead. Tiny config on every tissue tile; the large config
   (random weights, 675M parameters) on a few tiles only.
Peak RSS is printed after each part.

    python benchmarks/bench_slide.py            # tiny on all tiles (50% overlap), large on 4 tiles
    python benchmarks/bench_slide.py --quick    # about two minutes on 2 idle CPU cores
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_bytes  # noqa: E402

SLIDE = Path(__file__).resolve().parents[1] / "openmusk" / "assets" / "demo" / "cmu_small_region.svs"


def mib() -> str:
    return f"{peak_rss_bytes() / 2 ** 20:.0f} MiB"


def cut_tiles(overlap: float, min_tissue: float):
    """The slide's tiles for a tiling setting."""
    from openmusk.slide import TilingConfig, open_slide, segment_tissue, tile_slide

    with open_slide(SLIDE) as s:
        tissue, _ = segment_tissue(s)
        return tile_slide(s, tissue, TilingConfig(overlap=overlap, min_tissue=min_tissue))


def bench_reading(tiles, workers: list[int], batch_size: int) -> None:
    from torch.utils.data import DataLoader

    from openmusk.slide import TileDataset

    print(f"\n== tile reading: {len(tiles)} tiles of 384 px at 0.5 µm/px, batch {batch_size}")
    base = None
    for w in workers:
        ds = TileDataset(SLIDE, tiles.coords, 0.5, 384)
        loader = DataLoader(ds, batch_size=batch_size, num_workers=w)
        t = time.perf_counter()
        n = sum(len(b) for b, _ in loader)
        rate = n / (time.perf_counter() - t)
        base = base or rate
        print(f"  workers={w}: {rate:7.1f} tiles/s  ({rate / base:.2f}x workers=0)")
    print(f"  peak RSS {mib()}")


def bench_end_to_end(name: str, n_tiles: int | None, overlap: float, batch_size: int, workers: int,
                     repeats: int) -> None:
    from openmusk.encoders import load_encoder
    from openmusk.slide import ExtractConfig, TilingConfig, Tiles, extract_slide, open_slide, write_coords

    tiling = TilingConfig(overlap=overlap)
    tiles = cut_tiles(overlap, tiling.min_tissue)
    if n_tiles is not None:
        tiles = Tiles(tiles.coords[:n_tiles], tiles.attrs)
    torch.manual_seed(0)
    t = time.perf_counter()
    encoder = load_encoder("musk", weights="random", arch=name, device="cpu", precision="fp32")
    build = time.perf_counter() - t
    config = ExtractConfig(batch_size=batch_size, num_workers=workers, tiling=tiling)
    print(f"\n== {name}: {len(tiles)} tiles, multiscale, batch {batch_size}, {workers} workers, "
          f"best of {repeats} (model built in {build:.1f} s)")
    # the model alone on the same tiles, already decoded and batched in memory
    with open_slide(SLIDE) as s:
        arrays = np.stack([np.asarray(s.read_region(tuple(map(int, c)), (384, 384), 0.5)) for c in tiles.coords])
    batches = torch.from_numpy(arrays).split(batch_size)
    fwd = e2e = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                encoder.encode_image(encoder.batch_transform(b), kind="probe", normalize=False)
        fwd = min(fwd, time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            write_coords(out / "coords" / f"{SLIDE.stem}.h5", tiles)   # extraction reuses these tiles
            t = time.perf_counter()
            result = extract_slide(SLIDE, out, encoder, config, progress=False)
            e2e = min(e2e, time.perf_counter() - t)
        assert result.tiles == len(tiles), result
    print(f"  end to end   {len(tiles) / e2e:8.3g} tiles/s  ({e2e:.2f} s)")
    print(f"  forward only {len(tiles) / fwd:8.3g} tiles/s  ({fwd:.2f} s)")
    print(f"  pipeline overhead ratio (end to end / forward) {e2e / fwd:.2f}x;  peak RSS {mib()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="no overlap for the tiny run, 1 large tile")
    p.add_argument("--large-tiles", type=int, default=4, help="tiles for the large config (0: skip)")
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs (tiny config)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", default="0,1,2", help="worker counts for the reading benchmark")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overlap = 0.0 if args.quick else 0.5
    large = min(args.large_tiles, 1) if args.quick else args.large_tiles
    print(f"torch {torch.__version__}, {args.threads} threads, slide {SLIDE.name}")
    bench_reading(cut_tiles(0.75, 0.0), [int(w) for w in args.workers.split(",")], args.batch_size)
    bench_end_to_end("musk_tiny_patch16_384", None, overlap, args.batch_size, workers=1, repeats=args.repeats)
    if large:
        bench_end_to_end("musk_large_patch16_384", large, 0.0, min(args.batch_size, large), workers=1, repeats=1)


if __name__ == "__main__":
    main()
