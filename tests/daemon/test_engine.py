"""The engine against `model.generate`: continuous batching must not change greedy outputs.

Both backends run: the DeepSeek-V3 tiny model (MLA) goes to the step engine, the Llama tiny model to
transformers' continuous batching. Requests of different lengths join at different times and leave at
different times, which is exactly where a batching bug (padding, positions, cache merge) would show.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from deepseek_node.daemon.engines.builtin.assemble import build_engine
from deepseek_node.daemon.engines.builtin.engine import BatchingEngine, QueueFull, SamplingParams
from deepseek_node.daemon.runtime import prepare
from deepseek_node.daemon.testing import config_for

PROMPTS = [
    "Hello",
    "What is the capital of France?",
    "Explain how a transformer works: attention mixes tokens, feed-forward layers transform them.",
    "Numbers: 0 1 2 3",
    "Please write a short poem about the sea. The waves roll in and out",
    "Operators provision GPU nodes with Ansible",
]


def _engine(model_dir: Path, **engine: Any) -> BatchingEngine:
    # float32 everywhere: the reference is float32 `generate`, and on a GPU `auto` would pick bfloat16.
    cfg = config_for(
        model_dir,
        "k",
        engine={"max_running": 4, "max_queue": 16, "separate_process": False, **engine},
        model={"dtype": "float32"},
    )
    return build_engine(cfg, prepare(cfg))


async def _run(engine: BatchingEngine, jobs: list[tuple[list[int], SamplingParams]], stagger: float = 0.0):
    await engine.start()
    while not engine.ready:
        assert engine.state.value != "failed", engine.load_error
        await asyncio.sleep(0.01)

    async def one(i: int, ids: list[int], p: SamplingParams) -> tuple[str, Any]:
        await asyncio.sleep(stagger * i)
        h = engine.submit(ids, p, f"r{i}")
        text = "".join([ev.text async for ev in h])
        return text, h

    try:
        return await asyncio.gather(*(one(i, ids, p) for i, (ids, p) in enumerate(jobs)))
    finally:
        await engine.shutdown()


def _reference(model_dir: Path, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
    out = []
    for ids in prompts:
        g = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False)
        out.append(g[0, len(ids) :].tolist())
    return out


@pytest.mark.parametrize(
    ("fixture", "backend"),
    [("tiny_model_dir", "step"), ("tiny_llama_dir", "step"), ("tiny_llama_dir", "continuous_batching")],
)
def test_greedy_matches_generate_under_batching(
    fixture: str, backend: str, request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    prompts = [tok.encode(p) for p in PROMPTS]
    max_new = 12
    expected = _reference(model_dir, prompts, max_new)
    engine = _engine(model_dir, backend=backend)
    # max_running=4 < 6 requests: two wait, then join a batch already decoding (staggered arrivals too).
    jobs = [(ids, SamplingParams(max_tokens=max_new, temperature=0.0)) for ids in prompts]
    results = asyncio.run(_run(engine, jobs, stagger=0.005))
    assert engine.backend_name == backend
    eos = set(engine.info["eos_ids"])
    for (text, h), exp in zip(results, expected, strict=True):
        exp_trim = []
        for t in exp:
            exp_trim.append(t)
            if t in eos:
                break
        assert h.completion_tokens == len(exp_trim)
        assert text == tok.decode([t for t in exp_trim if t not in eos], skip_special_tokens=True)
        assert h.finish_reason == ("stop" if exp_trim[-1] in eos else "length")


@pytest.mark.parametrize(
    ("fixture", "backend"), [("tiny_model_dir", "step"), ("tiny_llama_dir", "continuous_batching")]
)
def test_seed_is_reproducible_and_batch_independent(
    fixture: str, backend: str, request: pytest.FixtureRequest
) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    engine = _engine(model_dir, backend=backend)
    p = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, seed=1234)
    other = SamplingParams(max_tokens=10, temperature=1.0, seed=99)
    prompt = [5, 6, 7, 8, 9]
    # The seeded request alone, then twice more alongside different company.
    jobs = [(prompt, p), ([10, 11, 12], other), (prompt, p), ([20] * 9, other), (prompt, p)]
    results = asyncio.run(_run(engine, jobs, stagger=0.003))
    seeded = [results[i][0] for i in (0, 2, 4)]
    assert seeded[0] == seeded[1] == seeded[2]
    assert results[0][0] != results[1][0] or results[0][0] != results[3][0]


def test_stop_sequence_and_usage(tiny_model_dir: Path) -> None:
    engine = _engine(tiny_model_dir)
    base = SamplingParams(max_tokens=20, temperature=0.0)
    [(text, h)] = asyncio.run(_run(engine, [([5, 6, 7], base)]))
    assert len(text) > 4
    stop = text[2:4]
    engine = _engine(tiny_model_dir)
    [(cut, h2)] = asyncio.run(
        _run(engine, [([5, 6, 7], SamplingParams(max_tokens=20, temperature=0.0, stop=(stop,)))])
    )
    assert cut == text[: text.index(stop)]
    assert h2.finish_reason == "stop"
    assert 1 <= h2.completion_tokens < h.completion_tokens


def test_admission_queue_is_bounded(tiny_model_dir: Path) -> None:
    engine = _engine(tiny_model_dir, max_running=2, max_queue=3)

    async def go() -> None:
        await engine.start()
        while not engine.ready:
            await asyncio.sleep(0.01)
        handles = [
            engine.submit([5, 6], SamplingParams(max_tokens=30, temperature=0.0), f"q{i}") for i in range(5)
        ]
        assert engine.stats().running == 2 and engine.stats().waiting == 3
        with pytest.raises(QueueFull):
            engine.submit([5, 6], SamplingParams(max_tokens=3), "overflow")
        handles[4].cancel()  # a waiting request leaves the queue at once
        assert engine.stats().waiting == 2
        for h in handles[:4]:
            assert "".join([e.text async for e in h]) is not None
            assert h.completion_tokens == 30
        assert await engine.wait_idle(5)
        await engine.shutdown()

    asyncio.run(go())


def test_backend_choice(tiny_model_dir: Path, tiny_llama_dir: Path) -> None:
    """auto: the step engine on CPU; transformers' manager only where its probe passes (not for MLA)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepseek_node.daemon.engines.builtin.load import _probe_cb, choose_backend

    for model_dir, cb_ok in ((tiny_model_dir, False), (tiny_llama_dir, True)):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        reason = _probe_cb(model, tok.encode("Hello"), (tok.eos_token_id,))
        assert (reason is None) == cb_ok, reason
        cfg = config_for(model_dir, "k")
        assert choose_backend(cfg, "cpu", model, tok, (tok.eos_token_id,)).value == "step"
        on_gpu = choose_backend(cfg, "cuda", model, tok, (tok.eos_token_id,)).value
        assert on_gpu == ("continuous_batching" if cb_ok else "step")
        # The probe must leave the model as it found it (attention implementation restored).
        assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_llama_dir"])
def test_int8_quantization_on_cpu(fixture: str, request: pytest.FixtureRequest) -> None:
    """quantization: int8 from the plan loads through bitsandbytes and generates (MLA included)."""
    pytest.importorskip("bitsandbytes")
    model_dir: Path = request.getfixturevalue(fixture)
    cfg = config_for(model_dir, "k", model={"quantization": "int8"}, engine={"separate_process": False})
    plan = prepare(cfg)
    assert plan.quant_library == "bitsandbytes"
    engine = build_engine(cfg, plan)
    [(_, h)] = asyncio.run(_run(engine, [([5, 6, 7], SamplingParams(max_tokens=6, temperature=0.0))]))
    assert h.completion_tokens >= 1 and h.finish_reason in ("length", "stop")


def test_out_of_memory_fails_the_batch_and_the_engine_keeps_serving(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OOM in a step fails the sequences of that batch with a clear error; the next request is served
    (a process restart would reload the model)."""
    from deepseek_node.daemon.engines.builtin import backend_step

    real = backend_step.StepBackend._decode
    calls = {"n": 0}

    def flaky(self: Any, updates: list) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        real(self, updates)

    monkeypatch.setattr(backend_step.StepBackend, "_decode", flaky)
    engine = _engine(tiny_llama_dir, backend="step", warmup=False)
    params = SamplingParams(max_tokens=8, temperature=0)

    async def go() -> tuple[list, str]:
        await engine.start()
        while not engine.ready:
            assert engine.state.value != "failed", engine.load_error
            await asyncio.sleep(0.01)
        try:
            first = [ev async for ev in engine.submit([1, 2, 3], params, "a")]
            again = "".join([ev.text async for ev in engine.submit([1, 2, 3], params, "b")])
            return first, again
        finally:
            await engine.shutdown()

    first, again = asyncio.run(go())
    assert first[-1].finish_reason == "error" and "out of memory" in (first[-1].error or "")
    assert again and engine.state.value in ("stopped", "ready")
