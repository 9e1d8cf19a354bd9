"""Report summaries: turn a long pathology report into a short structured summary with a language model.

MUSK reads 100 tokens; the paper had GPT-4 summarise each report with expert prompts (tumour size,
differentiation, invasion, lymph-node metastases, patient characteristics). Here the model is
pluggable: a local Hugging Face ``transformers`` text-generation model
(:class:`TransformersSummarizer`), any OpenAI-compatible ``/chat/completions`` endpoint -- vLLM,
llama.cpp server, Ollama, a hosted API -- (:class:`OpenAIChatSummarizer`), or any callable with a
``name``. Prompts are editable text files with a ``{report}`` placeholder; three ship with the
package (``prognosis``, ``lung``, ``gastroesophageal``, see :data:`PROMPTS`).

Summaries are cached in a CSV (default ``<cohort>.summaries.csv`` beside the cohort table) with
the model and the prompt (name and SHA-256) that made each one, keyed by the report's SHA-256:
a rerun only summarises what is missing, a changed prompt or model never reuses old summaries, and
the file is rewritten atomically every few summaries, so an interrupted run resumes.

>>> s = OpenAIChatSummarizer("http://localhost:8000/v1", "meta-llama/Llama-3.1-8B-Instruct")
>>> summaries = summarize_reports(reports, s, "prognosis", cache="cohort.summaries.csv")
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

from openmusk.core.config import path_field

__all__ = ["PROMPTS", "SummaryConfig", "Summarizer", "TransformersSummarizer", "OpenAIChatSummarizer",
           "load_prompt", "render_prompt", "load_summarizer", "summarize_reports", "read_summaries",
           "default_cache", "SummaryError"]

_PROMPT_DIR = Path(__file__).resolve().parent.parent / "assets" / "prompts"
PROMPTS = ("prognosis", "lung", "gastroesophageal")
CACHE_COLUMNS = ["report_sha256", "model", "prompt", "prompt_sha256", "summary"]


class SummaryError(RuntimeError):
    """A summariser failed or a needed summary is missing from the cache (the message says which)."""


@dataclass
class SummaryConfig:
    """How report summaries are made: the ``summary:`` section of a mil config."""

    backend: str = ""                 # "" (read the cache only) | transformers | openai | module:function
    model: str = ""                   # HF name/path, or the endpoint's model name; names the cache rows
    url: str = "http://localhost:8000/v1"  # OpenAI-compatible base URL (…/v1)
    api_key_env: str = "OPENAI_API_KEY"    # environment variable holding the key (may be unset)
    prompt: str = path_field("prognosis", when=lambda v: v not in PROMPTS)  # shipped name or a file
    cache: Optional[str] = path_field(None)  # CSV; default <cohort>.summaries.csv
    max_new_tokens: int = 256
    timeout: float = 300.0


class Summarizer(Protocol):
    """Anything with a ``name`` (the model, recorded in the cache) mapping a prompt to its answer."""

    name: str

    def __call__(self, prompt: str) -> str: ...


def load_prompt(prompt: str) -> tuple[str, str]:
    """(name, template) of a shipped prompt name or a template file; it must contain ``{report}``."""
    path = _PROMPT_DIR / f"{prompt}.txt" if prompt in PROMPTS else Path(prompt)
    if not path.is_file():
        raise FileNotFoundError(f"prompt {prompt!r}: no such file {path} (shipped prompts: {PROMPTS})")
    text = path.read_text(encoding="utf-8")
    if "{report}" not in text:
        raise ValueError(f"{path}: a prompt template needs a {{report}} placeholder")
    return (prompt if prompt in PROMPTS else path.stem), text


def render_prompt(template: str, report: str) -> str:
    """The template with ``{report}`` replaced (other braces are left alone, prompts may hold JSON)."""
    return template.replace("{report}", report.strip())


class TransformersSummarizer:
    """A local causal language model through ``transformers`` (greedy decoding, new tokens only).

    ``model``: a name or folder for ``AutoModelForCausalLM.from_pretrained``, or a loaded model
    (then pass its ``tokenizer``). Uses the tokenizer's chat template when it has one.
    """

    def __init__(self, model, tokenizer=None, max_new_tokens: int = 256, device: str = "auto",
                 name: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from openmusk.core.runtime import resolve_device

        if isinstance(model, (str, os.PathLike)):
            self.name = name or str(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model))
            model = AutoModelForCausalLM.from_pretrained(str(model))
        else:
            if tokenizer is None:
                raise ValueError("TransformersSummarizer: pass the tokenizer with a loaded model")
            self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.model = model.to(resolve_device(device)).eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens

    def __call__(self, prompt: str) -> str:
        import torch

        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = prompt
        enc = tok(text, return_tensors="pt").to(self.model.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=pad)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


class OpenAIChatSummarizer:
    """A model behind an OpenAI-compatible ``POST {url}/chat/completions`` (stdlib HTTP, temperature 0)."""

    def __init__(self, url: str, model: str, api_key: str | None = None, max_tokens: int = 256,
                 timeout: float = 300.0):
        self.url = url.rstrip("/") + "/chat/completions"
        self.name = model
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.timeout = timeout

    def __call__(self, prompt: str) -> str:
        import urllib.error
        import urllib.request

        body = json.dumps({"model": self.name, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            raise SummaryError(f"{self.url}: HTTP {e.code} {e.reason}: {detail}") from None
        except (urllib.error.URLError, TimeoutError) as e:
            raise SummaryError(f"{self.url}: cannot reach the endpoint ({e})") from None
        except json.JSONDecodeError as e:
            raise SummaryError(f"{self.url}: reply is not JSON ({e})") from None
        try:
            return str(reply["choices"][0]["message"]["content"]).strip()
        except (KeyError, IndexError, TypeError):
            raise SummaryError(f"{self.url}: reply has no choices[0].message.content: "
                               f"{json.dumps(reply)[:300]}") from None


def load_summarizer(config: SummaryConfig) -> Summarizer | None:
    """The configured back-end; None for ``backend: ""`` (summaries must already be cached)."""
    if not config.backend:
        return None
    if config.backend == "transformers":
        return TransformersSummarizer(config.model, max_new_tokens=config.max_new_tokens)
    if config.backend == "openai":
        return OpenAIChatSummarizer(config.url, config.model, os.environ.get(config.api_key_env),
                                    config.max_new_tokens, config.timeout)
    if ":" in config.backend:
        from openmusk.core.registry import import_object

        fn = import_object(config.backend)
        return fn(config) if isinstance(fn, type) else _Named(config.model or config.backend, fn)
    raise ValueError(f"summary backend {config.backend!r}: use transformers, openai, module:function or ''")


@dataclass
class _Named:
    """A plain function as a summariser, named for the cache."""

    name: str
    fn: Callable[[str], str]

    def __call__(self, prompt: str) -> str:
        return self.fn(prompt)


def default_cache(cohort: str | os.PathLike) -> Path:
    """``<cohort folder>/<cohort stem>.summaries.csv``: summaries live beside their cohort."""
    p = Path(cohort)
    return p.with_name(f"{p.stem}.summaries.csv")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_summaries(cache: str | os.PathLike):
    """The cache table (columns :data:`CACHE_COLUMNS`); empty when the file does not exist."""
    import pandas as pd

    if not os.path.isfile(cache):
        return pd.DataFrame(columns=CACHE_COLUMNS)
    df = pd.read_csv(cache, dtype=str, keep_default_na=False)
    missing = [c for c in CACHE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{cache}: not a summaries cache, missing column(s) {missing}")
    return df


def _write_cache(cache: str | os.PathLike, df) -> None:
    from openmusk.core.io import atomic_path

    with atomic_path(cache, suffix=".csv.tmp") as tmp:
        df.to_csv(tmp, index=False)


def summarize_reports(reports: Sequence[str], summarizer: Summarizer | None, prompt: str = "prognosis",
                      cache: str | os.PathLike | None = None, model: str | None = None,
                      flush_every: int = 8, progress: bool = False,
                      log: Callable[[str], None] | None = None) -> list[str]:
    """One summary per report, from ``cache`` when present, else from ``summarizer`` (then cached).

    ``model`` names the cache rows when ``summarizer`` is None (cache only): a report without a
    cached summary for that model and prompt is then an error naming how many are missing.
    An empty answer from the model is an error naming the report's position.
    """
    import pandas as pd

    prompt_name, template = load_prompt(prompt)
    prompt_sha = _sha(template)
    name = summarizer.name if summarizer is not None else model
    if not name:
        raise ValueError("summaries: name the model (summary.model) whose cached summaries to use")
    table = read_summaries(cache) if cache is not None else pd.DataFrame(columns=CACHE_COLUMNS)
    mine = table[(table["model"] == name) & (table["prompt_sha256"] == prompt_sha)]
    found = dict(zip(mine["report_sha256"], mine["summary"]))
    keys = [_sha(str(r)) for r in reports]
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    todo = [i for k, i in first.items() if k not in found]
    if todo and summarizer is None:
        where = f" in {cache}" if cache is not None else ""
        raise SummaryError(f"{len(todo)} of {len(reports)} reports have no summary by {name!r} with prompt "
                           f"{prompt_name!r}{where}; run `openmusk mil summarize` or set summary.backend")
    if todo and log:
        log(f"summarising {len(todo)} reports with {name} (prompt {prompt_name}); {len(reports) - len(todo)} cached")
    new: list[dict] = []
    iterator = todo
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(todo, desc="summaries", unit="report")
    for n, i in enumerate(iterator, 1):
        answer = summarizer(render_prompt(template, str(reports[i])))
        if not str(answer).strip():
            raise SummaryError(f"{name}: empty summary for report {i}")
        found[keys[i]] = str(answer).strip()
        new.append({"report_sha256": keys[i], "model": name, "prompt": prompt_name,
                    "prompt_sha256": prompt_sha, "summary": found[keys[i]]})
        if cache is not None and (n % flush_every == 0 or n == len(todo)):
            table = pd.concat([table, pd.DataFrame(new, columns=CACHE_COLUMNS)], ignore_index=True)
            new = []
            _write_cache(cache, table)
    return [found[k] for k in keys]
