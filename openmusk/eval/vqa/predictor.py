"""A fine-tuned VQA model on disk and in use: save/load the folder, ask a question, evaluate a set.

A VQA checkpoint is a folder: ``model.safetensors`` (the MUSK backbone in the released key layout,
so ``openmusk.model.create_model(pretrained=...)`` reads it too), ``vqa_head.safetensors`` (pooler and
classifier, with the head settings in its metadata) and ``answers.json`` (the answer vocabulary).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image

from openmusk.core.io import write_json
from openmusk.core.runtime import DEFAULT_DEVICE, DEFAULT_PRECISION, autocast, resolve_device, resolve_precision
from openmusk.eval.vqa.answers import AnswerVocab, is_closed, normalize_answer
from openmusk.eval.vqa.data import VQACollate, VQAData, VQADataset
from openmusk.eval.vqa.evaluate import accuracy_report, write_predictions
from openmusk.eval.vqa.model import MuskVQA

__all__ = ["save_vqa", "load_vqa", "VQAPredictor"]

HEAD_FILE, BACKBONE_FILE, ANSWERS_FILE = "vqa_head.safetensors", "model.safetensors", "answers.json"


def save_vqa(model: MuskVQA, vocab: AnswerVocab, folder: str | os.PathLike,
             max_len: int = 64) -> Path:
    """Write a VQA checkpoint folder (backbone, heads, answer vocabulary), each file atomically."""
    from safetensors.torch import save_file

    from openmusk.core.io import atomic_path
    from openmusk.model import save_checkpoint

    if len(vocab) != model.num_answers:
        raise ValueError(f"vocabulary has {len(vocab)} answers, the classifier {model.num_answers}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.backbone, folder / BACKBONE_FILE)
    heads = {k: v.detach().contiguous().cpu() for k, v in model.heads().state_dict().items()}
    meta = {"format": "openmusk-vqa-1", "num_answers": str(model.num_answers),
            "question_only": json.dumps(model.question_only), "max_len": str(max_len)}
    with atomic_path(folder / HEAD_FILE, suffix=".safetensors.tmp") as tmp:
        save_file(heads, str(tmp), metadata=meta)
    write_json(folder / ANSWERS_FILE, vocab.to_dict())
    return folder


def load_vqa(folder: str | os.PathLike, device: str | torch.device | None = DEFAULT_DEVICE
             ) -> tuple[MuskVQA, AnswerVocab, dict]:
    """Load a VQA checkpoint folder onto ``device`` (auto: this rank's GPU, else the CPU):
    (model in eval mode, vocabulary, head metadata)."""
    from safetensors import safe_open

    from openmusk.core.io import CheckpointFileError, load_safetensors, read_json
    from openmusk.model import create_model

    folder = Path(folder)
    for name in (BACKBONE_FILE, HEAD_FILE, ANSWERS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: not a VQA checkpoint folder ({name} is missing)")
    try:
        with safe_open(str(folder / HEAD_FILE), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error type for a corrupt header
        raise CheckpointFileError(f"{folder / HEAD_FILE}: not a valid safetensors file ({e})") from None
    if meta.get("format") != "openmusk-vqa-1":
        raise ValueError(f"{folder / HEAD_FILE}: not an openmusk VQA head (format {meta.get('format')!r})")
    vocab = AnswerVocab.from_dict(read_json(folder / ANSWERS_FILE))
    backbone = create_model(pretrained=str(folder / BACKBONE_FILE))
    model = MuskVQA(backbone, int(meta["num_answers"]), question_only=json.loads(meta["question_only"]))
    if len(vocab) != model.num_answers:
        raise ValueError(f"{folder}: {ANSWERS_FILE} has {len(vocab)} answers, the head "
                         f"{model.num_answers}")
    missing, unexpected = model.heads().load_state_dict(load_safetensors(folder / HEAD_FILE, "VQA head"), strict=False)
    if missing or unexpected:
        raise ValueError(f"{folder / HEAD_FILE}: missing {missing}, unexpected {unexpected}")
    return model.to(resolve_device(device)).eval(), vocab, {**meta, "max_len": int(meta.get("max_len", 64))}


class VQAPredictor:
    """Answers questions about images with a fine-tuned model (``ask``) or over a set (``evaluate``)."""

    def __init__(self, model: MuskVQA, vocab: AnswerVocab, max_len: int = 64,
                 precision: str | None = DEFAULT_PRECISION) -> None:
        from openmusk.data.transforms import get_transform
        from openmusk.text import get_tokenizer

        self.model, self.vocab, self.max_len = model.eval(), vocab, max_len
        self.tokenizer = get_tokenizer()
        self.transform = get_transform(img_size=model.backbone.config.img_size)
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device | None = DEFAULT_DEVICE,
                        precision: str | None = DEFAULT_PRECISION) -> "VQAPredictor":
        """Load a checkpoint folder written by ``openmusk vqa train`` / ``save_vqa``."""
        model, vocab, meta = load_vqa(folder, device)
        return cls(model, vocab, max_len=meta["max_len"], precision=precision)

    @torch.no_grad()
    def _probabilities(self, batch: dict) -> torch.Tensor:
        images = batch.get("images")
        with autocast(self.device, self.precision):
            logits = self.model(images.to(self.device) if images is not None else None,
                                batch["input_ids"].to(self.device),
                                batch["padding_mask"].to(self.device))
        return logits.float().softmax(-1).cpu()

    def ask(self, image: Image.Image | str | os.PathLike, question: str,
            topk: int = 5) -> list[tuple[str, float]]:
        """The ``topk`` most probable answers to ``question`` about ``image`` (PIL or path)."""
        from openmusk.core.images import open_image, to_rgb

        image = to_rgb(image) if isinstance(image, Image.Image) else open_image(image)
        ids, mask = self.tokenizer([question], max_len=self.max_len)
        probs = self._probabilities({"images": self.transform(image)[None],
                                     "input_ids": ids, "padding_mask": mask})[0]
        p, idx = probs.topk(min(topk, len(self.vocab)))
        return list(zip(self.vocab.lookup(idx.tolist()), p.tolist()))

    def predict(self, data: VQAData, batch_size: int = 32, num_workers: int = 0, topk: int = 5,
                progress: bool = True) -> tuple[list[dict], list[str]]:
        """Per-question prediction rows and the errors of rows whose image could not be read."""
        from tqdm.auto import tqdm

        ds = VQADataset(data, self.transform, load_images=not self.model.question_only)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                                             collate_fn=VQACollate(self.tokenizer, self.max_len))
        rows, errors = [], []
        for batch in tqdm(loader, desc="vqa predict", disable=not progress, unit="batch"):
            errors += [msg for _, msg in batch["errors"]]
            if len(batch["index"]) == 0:
                continue
            probs = self._probabilities(batch)
            top_p, top_i = probs.topk(min(topk, len(self.vocab)), dim=-1)
            for i, p_row, i_row in zip(batch["index"].tolist(), top_p.tolist(), top_i.tolist()):
                answers = self.vocab.lookup(i_row)
                ref = data.answers[i]
                rows.append({"question_id": data.question_ids[i], "image_id": data.image_ids[i],
                             "question": data.questions[i], "answer": ref,
                             "prediction": answers[0], "probability": p_row[0],
                             "closed": is_closed(ref),
                             "correct": float(normalize_answer(answers[0]) == normalize_answer(ref)),
                             "top_answers": [[a, p] for a, p in zip(answers, p_row)]})
        return rows, errors

    def evaluate(self, data: VQAData, predictions: str | os.PathLike | None = None,
                 batch_size: int = 32, num_workers: int = 0, n_resamples: int = 1000,
                 progress: bool = True) -> dict:
        """Accuracy overall / closed / open with bootstrap 95% CIs; optionally write predictions."""
        rows, errors = self.predict(data, batch_size, num_workers, progress=progress)
        if not rows:
            raise ValueError(f"no question could be evaluated; first errors: {errors[:3]}")
        report = accuracy_report([r["correct"] for r in rows], [r["closed"] for r in rows],
                                 n_resamples=n_resamples)
        if predictions is not None:
            write_predictions(predictions, rows)
        in_vocab = sum(r["answer"] in self.vocab for r in rows) / len(rows)
        return {"accuracy": {k: v.to_dict() for k, v in report.items()},
                "questions": len(rows), "images": len({r["image_id"] for r in rows}),
                "answer_coverage": in_vocab, "skipped": errors}

