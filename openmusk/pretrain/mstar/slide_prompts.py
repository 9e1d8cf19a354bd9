"""Slide zero-shot and few-shot from tile features, as mSTAR and MI-Zero (Lu et al., CVPR 2023) run them.

* Zero-shot: every tile is scored against each class's prompt embedding (the mean of its
  normalised prompt embeddings: several templates x class-name synonyms, from an editable prompt
  file); a class's slide score is the mean of its ``j`` highest tile scores (top-j pooling).
* Few-shot with text-guided prototypes: each class prototype starts at the class's prompt
  embedding and moves towards the ``k`` labelled slides of that class (each shot contributes the
  mean of its top-j tiles for the class, the prompt embedding counts as ``prior`` shots); test
  slides are then scored by top-j pooling against the prototypes.

Tile features must live in the same space as the text embeddings (an encoder's ``embed`` kind,
e.g. ``openmusk slide extract --kind embed``); the prompt file format is :func:`read_prompts`.
The aggregator-embedding method of :mod:`openmusk.pretrain.mstar.downstream` stays beside these.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["read_prompts", "class_embeddings", "topj_pool", "zero_shot_topj", "few_shot_text_prototypes",
           "slide_metrics", "read_slide_table", "run_zero_shot", "run_few_shot"]


def read_prompts(path: str | os.PathLike) -> dict[str, list[str]]:
    """Per-class prompt lists from a YAML/JSON file.

    Either MI-Zero's layout, ``{"templates": ["an image of {c}.", ...], "classnames": {"LUAD":
    ["lung adenocarcinoma", ...], ...}}`` (``classes`` is accepted for ``classnames``; every
    template x synonym is a prompt), or a plain ``{"LUAD": ["prompt", ...], ...}``.
    """
    from openmusk.core.config import read_mapping

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    data = read_mapping(path)
    if not data:
        raise ValueError(f"{path}: a prompt file maps class names to prompts (or has templates + classnames)")
    names = data.get("classnames", data.get("classes"))
    if "templates" in data or names is not None:
        templates = data.get("templates") or []
        if not isinstance(templates, list) or not templates or any("{c}" not in str(t) for t in templates):
            raise ValueError(f"{path}: 'templates' must be a non-empty list of strings with a '{{c}}' placeholder")
        if not isinstance(names, dict) or not names:
            raise ValueError(f"{path}: 'classnames' must map each class to its name(s)")
        out = {}
        for cls, syn in names.items():
            syn = [syn] if isinstance(syn, str) else list(syn or [])
            if not syn:
                raise ValueError(f"{path}: class {cls!r} has no name under 'classnames'")
            out[str(cls)] = [str(t).replace("{c}", str(s)) for s in syn for t in templates]
        return out
    out = {}
    for cls, prompts in data.items():
        prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"{path}: class {cls!r} needs a non-empty list of prompt strings")
        out[str(cls)] = prompts
    return out


def _l2(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def class_embeddings(prompts: Mapping[str, Sequence[str]], embed_texts: Any) -> tuple[list[str], np.ndarray]:
    """Class names and (C, D) class embeddings: the renormalised mean of each class's normalised prompt
    embeddings. ``embed_texts`` is an encoder (``openmusk.encoders``) or a function list[str] -> (n, D)."""
    from openmusk.encoders.embed import encode_texts

    classes = list(prompts)
    if not classes or any(not prompts[c] for c in classes):
        raise ValueError("zero-shot needs at least one prompt for every class")
    flat = [p for c in classes for p in prompts[c]]
    emb = np.asarray(embed_texts(flat) if callable(embed_texts) and not hasattr(embed_texts, "encode_text")
                     else encode_texts(embed_texts, flat), np.float64)
    out, start = [], 0
    for c in classes:
        out.append(_l2(emb[start:start + len(prompts[c])]).mean(0))
        start += len(prompts[c])
    return classes, _l2(np.stack(out))


def topj_pool(tiles: np.ndarray, targets: np.ndarray, topj: Sequence[int]) -> dict[int, np.ndarray]:
    """Per ``j``: (C,) mean of the ``j`` highest cosine similarities of the tiles (N, D) to each target (C, D)
    (``j`` larger than the slide uses every tile)."""
    tiles = _l2(tiles)
    if tiles.shape[1] != targets.shape[1]:
        raise ValueError(f"tile features have dim {tiles.shape[1]}, the class embeddings {targets.shape[1]}: "
                         f"tiles must be the text encoder's 'embed' features")
    sims = np.sort(tiles @ _l2(targets).T, axis=0)[::-1]
    return {int(j): sims[:min(int(j), len(sims))].mean(0) for j in topj}


def zero_shot_topj(bags: Sequence[np.ndarray], class_emb: np.ndarray, topj: Sequence[int] = (1, 5, 10, 50, 100)
                   ) -> dict[int, np.ndarray]:
    """Per ``j``: (S, C) slide scores by top-j pooling of tile-prompt similarities (MI-Zero)."""
    if not bags:
        raise ValueError("zero-shot needs at least one slide")
    pooled = [topj_pool(b, class_emb, topj) for b in bags]
    return {int(j): np.stack([p[int(j)] for p in pooled]) for j in topj}


def _shot_vector(tiles: np.ndarray, target: np.ndarray, j: int) -> np.ndarray:
    """Normalised mean of a slide's ``j`` tiles most similar to ``target``."""
    tiles = _l2(tiles)
    top = np.argsort(tiles @ target)[::-1][:j]
    return _l2(tiles[top].mean(0))


def _probs(scores: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """Class probabilities from cosine scores with a CLIP-like logit scale."""
    z = scores * scale
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def slide_metrics(labels: np.ndarray, scores: np.ndarray, n_resamples: int = 200) -> dict:
    """:func:`openmusk.mil.metrics.classification_metrics` of (S, C) slide scores: balanced accuracy, AUC (CI)."""
    from openmusk.mil.metrics import classification_metrics

    return classification_metrics(np.asarray(labels), _probs(scores), n_resamples=n_resamples)


def few_shot_text_prototypes(bags: Sequence[np.ndarray], labels: Sequence[int], class_emb: np.ndarray,
                             k: int, topj: int = 10, prior: float = 1.0, refine: int = 2,
                             seeds: Sequence[int] = range(5)) -> dict:
    """``k`` labelled slides per class build text-guided prototypes; the rest are scored, once per seed.

    Prototype c = normalise(prior x text_c + sum of the shots' top-j tile means for c); the shots'
    tiles are first picked by the text embedding, then ``refine`` times by the prototype. Returns the
    per-seed balanced accuracy and macro AUC and their means with a 95% CI.
    """
    from openmusk.core.stats import mean_ci
    from openmusk.mil.metrics import balanced_accuracy, roc_auc

    y = np.asarray(labels)
    text = _l2(class_emb)
    n_cls = len(text)
    if len(y) != len(bags):
        raise ValueError(f"{len(y)} labels for {len(bags)} slides")
    for c in range(n_cls):
        if (y == c).sum() <= k:
            raise ValueError(f"class {c} has {(y == c).sum()} slides: need more than k={k} to leave a test set")
    per_seed: list[dict] = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        shots = {c: rng.choice(np.flatnonzero(y == c), k, replace=False) for c in range(n_cls)}
        protos = text
        for _ in range(refine + 1):  # pick each shot's top-j tiles with the current prototype, re-average
            protos = np.stack([_l2(prior * text[c] + sum(_shot_vector(bags[i], protos[c], topj) for i in shots[c]))
                               for c in range(n_cls)])
        test = np.setdiff1d(np.arange(len(y)), np.concatenate(list(shots.values())))
        scores = np.stack([topj_pool(bags[i], protos, [topj])[topj] for i in test])
        per_seed.append({"balanced_accuracy": balanced_accuracy(y[test], scores.argmax(1)),
                         "auc": roc_auc(y[test], _probs(scores))})
    return {"k": k, "topj": topj, "prior": prior, "refine": refine, "per_seed": per_seed,
            **{f"{m}_mean": mean_ci([r[m] for r in per_seed]).to_dict() for m in ("balanced_accuracy", "auc")}}


def read_slide_table(path: str | os.PathLike, classes: Sequence[str] | None = None,
                     need_labels: bool = False) -> tuple[list[str], list[np.ndarray], np.ndarray | None]:
    """Slide ids, tile features (N, D) and integer labels (None without a ``label`` column) of a CSV
    with ``slide_id``, ``features`` (HDF5, :mod:`openmusk.data.features_h5`) and optionally ``label``."""
    import pandas as pd

    from openmusk.data.features_h5 import read_features

    path = Path(path)
    table = pd.read_csv(path, dtype={"slide_id": str, "label": str})
    for col in ("slide_id", "features") + (("label",) if need_labels else ()):
        if col not in table.columns:
            raise ValueError(f"{path}: missing column {col!r}; found {list(table.columns)}")
    bags = [read_features(f if Path(f).is_absolute() else path.parent / f)[0] for f in table["features"]]
    labels = None
    if "label" in table.columns:
        names = list(classes) if classes is not None else sorted(table["label"].unique())
        unknown = sorted(set(table["label"]) - set(names))
        if unknown:
            raise ValueError(f"{path}: labels {unknown} are not classes of the prompt file {names}")
        labels = np.array([names.index(v) for v in table["label"]])
    return table["slide_id"].tolist(), bags, labels


def _text_side(cfg: Any, prompts: Mapping[str, Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """Class embeddings from the configured encoder's text side."""
    from openmusk.encoders import load_encoder

    enc = load_encoder(cfg.encoder, weights=cfg.weights or None, device=cfg.device, precision=cfg.precision)
    if not getattr(enc, "has_text", False):
        raise ValueError(f"encoder {cfg.encoder!r} has no text side: zero-shot needs one")
    return class_embeddings(prompts, enc)


def run_zero_shot(cfg: Any) -> dict:
    """``openmusk mstar zero-shot``: writes ``predictions.csv`` (scores per class and top-j) and
    ``metrics.json`` (per top-j, when the table has labels) to ``cfg.output_dir``."""
    import pandas as pd

    from openmusk.core.io import atomic_path, write_json

    prompts = read_prompts(cfg.prompts)
    ids, bags, labels = read_slide_table(cfg.table, list(prompts))
    out = Path(cfg.output_dir)
    cols: dict[str, Any] = {"slide_id": ids}
    metrics: dict[str, Any] = {"method": cfg.method, "classes": list(prompts), "n_slides": len(ids)}
    if cfg.method == "topj":
        classes, emb = _text_side(cfg, prompts)
        results = {f"top{j}": s for j, s in zero_shot_topj(bags, emb, cfg.topj).items()}
    else:
        from openmusk.pretrain.mstar.downstream import zero_shot_slides
        from openmusk.pretrain.mstar.model import MstarPretrained

        if not cfg.stage1_dir:
            raise ValueError("method 'aggregator' needs stage1_dir (the output of `openmusk mstar pretrain-aggregator`)")
        classes, prob = zero_shot_slides(MstarPretrained(cfg.stage1_dir, cfg.device), bags, prompts)
        results = {"aggregator": prob}
    for name, scores in results.items():
        for c, cls in enumerate(classes):
            cols[f"{name}_{cls}"] = scores[:, c]
        cols[f"{name}_predicted"] = np.array(classes)[scores.argmax(1)]
        if labels is not None:
            metrics[name] = slide_metrics(labels, scores)
    if labels is not None:
        cols["label"] = np.array(classes)[labels]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "predictions.csv", suffix=".csv.tmp") as tmp:
        pd.DataFrame(cols).to_csv(tmp, index=False)
    write_json(out / "metrics.json", metrics)
    return metrics


def run_few_shot(cfg: Any) -> dict:
    """``openmusk mstar few-shot``: per k in ``cfg.shots``, ``cfg.seeds`` draws; writes ``metrics.json``."""
    from openmusk.core.io import write_json

    prompts = read_prompts(cfg.prompts)
    _, bags, labels = read_slide_table(cfg.table, list(prompts), need_labels=True)
    results = []
    if cfg.few_shot_method == "text_prototype":
        _, emb = _text_side(cfg, prompts)
        for k in cfg.shots:
            results.append(few_shot_text_prototypes(bags, labels, emb, k, cfg.few_shot_topj, cfg.prior,
                                                    seeds=range(cfg.seeds)))
    else:
        from openmusk.pretrain.mstar.downstream import few_shot_slides
        from openmusk.pretrain.mstar.model import MstarPretrained

        if not cfg.stage1_dir:
            raise ValueError(f"few_shot_method {cfg.few_shot_method!r} needs stage1_dir (aggregator embeddings)")
        feats = MstarPretrained(cfg.stage1_dir, cfg.device).raw_slide_features(bags).numpy()
        for k in cfg.shots:
            results.append(few_shot_slides(feats, labels, k, range(cfg.seeds), cfg.few_shot_method))
    metrics = {"method": cfg.few_shot_method, "classes": list(prompts), "results": results}
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.output_dir) / "metrics.json", metrics)
    return metrics
