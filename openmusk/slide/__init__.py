"""Whole slides: readers, tissue masks, tiling, feature extraction at scale, heatmaps, the demo.

>>> from openmusk.slide import ExtractConfig, extract_features
>>> extract_features("slides/", "features/", ExtractConfig())   # one HDF5 per slide, TRIDENT layout
"""
from openmusk.slide.extract import (ExtractConfig, SlideResult, TileDataset, extract_features, extract_slide,
                                    load_encoder, load_extract_config, read_features, read_summary, tile_slides)
from openmusk.slide.heatmap import draw_heatmap, export_tile_scores, heatmap_from_features, score_map, top_tiles_grid
from openmusk.slide.reader import MppMissingError, Slide, SlideError, list_slides, open_slide
from openmusk.slide.tiling import TilingConfig, Tiles, read_coords, tile_slide, write_coords
from openmusk.slide.tissue import (ClassicalSegmenter, Segmenter, TissueMask, mask_to_polygons,
                                   otsu_threshold, segment_tissue)

__all__ = ["ExtractConfig", "SlideResult", "TileDataset", "extract_features", "extract_slide", "load_encoder",
           "load_extract_config", "read_features", "read_summary", "draw_heatmap", "export_tile_scores",
           "heatmap_from_features", "tile_slides",
           "score_map", "top_tiles_grid", "MppMissingError", "Slide", "SlideError", "list_slides",
           "open_slide", "TilingConfig", "Tiles", "read_coords", "tile_slide", "write_coords",
           "ClassicalSegmenter", "Segmenter", "TissueMask", "mask_to_polygons", "otsu_threshold",
           "segment_tissue"]
