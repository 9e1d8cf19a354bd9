"""Report summaries: a real (tiny, random) transformers model from disk, an in-process
OpenAI-compatible server, the cache (resume, model/prompt keys) and the shipped prompts."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest

from openmusk.text.summarize import (PROMPTS, OpenAIChatSummarizer, SummaryConfig, SummaryError,
                                     load_prompt, load_summarizer, render_prompt, summarize_reports)

REPORTS = ["Invasive ductal carcinoma, 2.3 cm, grade 3, 4/12 lymph nodes positive.",
           "Adenocarcinoma of the lung, acinar predominant, 1.1 cm, pN0.",
           "Invasive ductal carcinoma, 2.3 cm, grade 3, 4/12 lymph nodes positive."]


def test_shipped_prompts_are_package_data_with_a_report_slot(tmp_path):
    for name in PROMPTS:
        got, text = load_prompt(name)
        assert got == name and "{report}" in text and "lymph" in text
    assert render_prompt("R: {report} {\"json\": 1}", " x ") == "R: x {\"json\": 1}"
    bad = tmp_path / "p.txt"
    bad.write_text("no slot")
    with pytest.raises(ValueError, match="placeholder"):
        load_prompt(str(bad))
    with pytest.raises(FileNotFoundError, match="shipped prompts"):
        load_prompt("no_such_prompt")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A randomly initialised 1-layer GPT-2 with a word-level tokenizer, saved the Hugging Face way."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for r in REPORTS + [load_prompt("prognosis")[1]] for w in r.replace(".", " ").split()})
    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")
    import torch

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                                  eos_token_id=1, bos_token_id=1)
    folder = tmp_path_factory.mktemp("tiny_lm")
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_transformers_backend_generates_and_the_cache_resumes(tiny_lm, tmp_path):
    s = load_summarizer(SummaryConfig(backend="transformers", model=str(tiny_lm), max_new_tokens=6))
    calls = []
    real = s.__call__

    class Counting:
        name = s.name

        def __call__(self, prompt):
            calls.append(prompt)
            return real(prompt)

    cache = tmp_path / "cohort.summaries.csv"
    out = summarize_reports(REPORTS, Counting(), "prognosis", cache)
    assert len(calls) == 2                       # the duplicate report is summarised once
    assert out[0] == out[2] and all(o.strip() for o in out)
    assert REPORTS[1] in calls[1]                # the rendered prompt carries the report
    table = pd.read_csv(cache)
    assert set(table["model"]) == {str(tiny_lm)} and set(table["prompt"]) == {"prognosis"}
    # greedy decoding is deterministic: the cached summary is what the model says again
    assert real(calls[0]) == out[0]
    calls.clear()
    assert summarize_reports(REPORTS, Counting(), "prognosis", cache) == out and calls == []
    summarize_reports(REPORTS[:1], Counting(), "lung", cache)   # another prompt: not reused
    assert len(calls) == 1 and len(pd.read_csv(cache)) == 3
    with pytest.raises(SummaryError, match="1 of 1 reports have no summary by 'other'"):
        summarize_reports(REPORTS[:1], None, "prognosis", cache, model="other")


class _Handler(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's spelling
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.requests.append((self.path, dict(self.headers), body))
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"model crashed")
            return
        text = body["messages"][0]["content"]
        reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": f" summary of {len(text)} chars "}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1"
    httpd.shutdown()


def test_openai_compatible_backend_speaks_chat_completions(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    s = load_summarizer(SummaryConfig(backend="openai", model="llama-3", url=server + "/", api_key_env="MY_KEY",
                                      max_new_tokens=50))
    assert isinstance(s, OpenAIChatSummarizer)
    _Handler.requests.clear()
    out = summarize_reports(REPORTS[:2], s, "lung", tmp_path / "c.csv")
    path, headers, body = _Handler.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "llama-3" and body["temperature"] == 0 and body["max_tokens"] == 50
    prompt = render_prompt(load_prompt("lung")[1], REPORTS[0])
    assert body["messages"] == [{"role": "user", "content": prompt}]
    assert out[0] == f"summary of {len(prompt)} chars"
    with pytest.raises(SummaryError, match=r"chat/completions: HTTP 500.*model crashed"):
        OpenAIChatSummarizer(server, "broken")("x")
    with pytest.raises(SummaryError, match="cannot reach"):
        OpenAIChatSummarizer("http://127.0.0.1:9/v1", "m", timeout=2)("x")


def test_mil_summarize_cli_fills_the_cache_beside_the_cohort(server, tmp_path, capsys):
    from openmusk.cli import main

    pd.DataFrame({"patient_id": ["a", "a", "b"], "slide_id": ["s1", "s2", "s3"], "label": [1, 1, 0],
                  "report": [REPORTS[0], REPORTS[0], REPORTS[1]]}).to_csv(tmp_path / "cohort.csv", index=False)
    (tmp_path / "run.yaml").write_text(f"cohort: cohort.csv\nsummary:\n  backend: openai\n  model: m\n  url: {server}\n")
    assert main(["mil", "summarize", str(tmp_path / "run.yaml"), "--quiet"]) == 0
    cache = pd.read_csv(tmp_path / "cohort.summaries.csv")
    assert len(cache) == 2 and set(cache["prompt"]) == {"prognosis"} and "2 report summaries" in capsys.readouterr().out
    (tmp_path / "run.yaml").write_text(f"cohort: cohort.csv\nsummary:\n  model: m\n  url: {server}\n")
    assert main(["mil", "summarize", str(tmp_path / "run.yaml")]) != 0
    assert "summary.backend is empty" in capsys.readouterr().err
