"""Whole slides: readers, tissue masks, tiling, feature extraction with any encoder, heatmaps, the demo.

>>> from openmusk.slide import ExtractConfig, extract_features
>>> extract_features("slides/", "features/", ExtractConfig())   # one HDF5 per slide, TRIDENT layout
>>> extract_features("slides/", "uni/", ExtractConfig(encoder="timm", encoder_kwargs={"model": "vit_large_patch16_224"}))
"""
from openmusk.data.features_h5 import read_features
from openmusk.slide.config import ExtractConfig
from openmusk.slide.encode import TileDataset, extract_slide, load_slide_encoder
from openmusk.slide.heatmap import draw_heatmap, export_tile_scores, heatmap_from_features, score_map, top_tiles_grid
from openmusk.slide.pipeline import extract_features, tile_slides
from openmusk.slide.reader import MppMissingError, Slide, SlideError, list_slides, open_slide
from openmusk.slide.summary import SlideResult, read_summary
from openmusk.slide.tiling import TilingConfig, Tiles, read_coords, tile_slide, write_coords
from openmusk.slide.tissue import (ClassicalSegmenter, Segmenter, TissueMask, mask_to_polygons,
                                   otsu_threshold, segment_tissue)

__all__ = ["ExtractConfig", "SlideResult", "TileDataset", "extract_features", "extract_slide",
           "load_slide_encoder", "read_features", "read_summary", "tile_slides", "draw_heatmap",
           "export_tile_scores", "heatmap_from_features", "score_map", "top_tiles_grid", "MppMissingError",
           "Slide", "SlideError", "list_slides", "open_slide", "TilingConfig", "Tiles", "read_coords",
           "tile_slide", "write_coords", "ClassicalSegmenter", "Segmenter", "TissueMask", "mask_to_polygons",
           "otsu_threshold", "segment_tissue"]
