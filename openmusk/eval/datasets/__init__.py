"""Readers of the benchmark datasets as their owners publish them, one small module per family.

``READERS[name](root, split, **options)`` returns an :class:`~openmusk.data.datasets.ImageDataset`;
dataset specs name a reader with ``format: published`` and ``reader: <name>``. Where no split is
published, :func:`~openmusk.eval.datasets.base.seeded_split` documents the one used.
"""
from __future__ import annotations

from openmusk.eval.datasets.bach import read_bach
from openmusk.eval.datasets.base import PublishedDataset, seeded_split
from openmusk.eval.datasets.bracs import read_bracs
from openmusk.eval.datasets.captions import read_bookset, read_pathmmu
from openmusk.eval.datasets.class_folders import read_lc25000, read_renalcell
from openmusk.eval.datasets.mhist import read_mhist
from openmusk.eval.datasets.osteo import read_osteo
from openmusk.eval.datasets.pannuke import read_pannuke
from openmusk.eval.datasets.pcam import read_pcam
from openmusk.eval.datasets.sicap import read_sicapv2
from openmusk.eval.datasets.skin import read_skin
from openmusk.eval.datasets.unitopatho import read_unitopatho
from openmusk.eval.datasets.wsss4luad import read_wsss4luad

__all__ = ["READERS", "PublishedDataset", "seeded_split"]

READERS = {"bach": read_bach, "bookset": read_bookset, "bracs": read_bracs, "lc25000": read_lc25000,
           "mhist": read_mhist, "osteo": read_osteo, "pannuke": read_pannuke, "pathmmu": read_pathmmu,
           "pcam": read_pcam, "renalcell": read_renalcell, "sicapv2": read_sicapv2, "skin": read_skin,
           "unitopatho": read_unitopatho, "wsss4luad": read_wsss4luad}
