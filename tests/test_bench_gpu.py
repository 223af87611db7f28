"""bench/bench_gpu.py (the GPU proof) on CPU: `--smoke` runs every stage end to end and its JSON keeps its contract.

The CUDA-only paths run through the test doubles of tests/fake_kernels.py: flash-attn's `flash_attn_varlen_func` and
torch's `varlen_attn` with torch 2.11's exact signature (the GPU image's: no enable_gqa, so ChatGLM3's 2 KV groups
are repeated to 32 heads before the call), in bf16 on CPU. Also: a stage that raises (an OOM) or outlives its time
box is recorded and the others still run; the full run refuses to start without CUDA, in one line.
"""

import json
import math
import time
from pathlib import Path

import pytest
import script_module
import torch
from fake_kernels import RECORD, kernels

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    return script_module.load("bench/bench_gpu.py")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    bench = load_bench()
    out = tmp_path_factory.mktemp("bench_gpu") / "smoke.json"
    with kernels("fake", "2.11"):
        RECORD.calls = 0
        returned = bench.main(["--smoke", "--out", str(out)])
        calls = RECORD.calls
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned, default=str))  # the file holds what the run returned
    return bench, data, calls


def test_every_stage_ran_and_the_backends_agree_with_fp32(smoke):
    bench, data, calls = smoke
    stages = data["stages"]
    assert list(stages) == list(bench.STAGES)
    assert {name: rec["status"] for name, rec in stages.items()} == {
        name: "skipped" if name == "qwen3_step" else "ok" for name in bench.STAGES}
    backends = stages["env"]["backends"]
    assert len(backends) == 3 and "flash-attn" in backends[0] and "varlen_attn" in backends[1]
    assert calls > 0  # the kernel doubles really ran
    expected = {"flash-attn varlen", "torch varlen_attn", "sdpa per sequence"}
    for name in ("attention_parity", "model_parity"):
        rows = stages[name]["rows"]
        assert len(rows) == 6 and {r["backend"] for r in rows} == expected, rows
        for r in rows:
            assert "error" not in r, r
            # bf16 against fp32: small, but not zero (a zero would mean the reference was not independent)
            assert 0 < r["grad_rel_worst"] <= bench.GOALS["parity"] and 0 < r["grad_rel"] <= r["grad_rel_worst"], r
            assert r["grad_max_abs"] < 0.1, r
            if name == "attention_parity":
                assert 0 < r["out_rel"] < 1e-2 and r["ms_fwd_bwd"] > 0, r
            else:
                assert r["loss_rel_diff"] < 1e-3, r
    chatglm = [r for r in stages["attention_parity"]["rows"] if r["shape"] == "ChatGLM3-6B"]
    assert {r["kv_heads"] for r in chatglm} == {2}
    pack = stages["attention_parity"]["pack"]
    assert sum(pack["lengths"]) == pack["tokens"] and 15 <= pack["sequences"] <= 25


def test_training_steps_memory_and_goals_are_computed(smoke):
    bench, data, _ = smoke
    stages = data["stages"]
    rate = stages["matmul"]["tflops"]
    assert rate > 0
    for name, full_tokens in bench.PACKS.items():
        rec = stages[name]
        lengths = rec["lengths"]
        assert rec["tokens"] == sum(lengths) == full_tokens // bench.SMOKE["scale"]
        # the formula the docstring states, recomputed from what the JSON says
        d_attn, layers = bench.SMOKE["llama"]["hidden_size"], rec["layers"]
        flops = 6 * rec["matmul_params"] * rec["tokens"] + 6 * layers * d_attn * sum(n * n for n in lengths)
        assert math.isclose(rec["flops"], flops, rel_tol=1e-12)
        rows = {r["impl"]: r for r in rec["rows"]}
        assert set(rows) == {"ours", "transformers sdpa"}  # no flash-attn package: no flash_attention_2 row
        for r in rows.values():
            assert "error" not in r, r
            assert math.isclose(r["tokens_per_s"], rec["tokens"] / r["step_s"])
            assert math.isclose(r["mfu"], flops / r["step_s"] / (rate * 1e12))
            assert r["peak_gb"] > r["step_peak_gb"] > 0
        ours, theirs = rows["ours"], rows["transformers sdpa"]
        ratio = rec["ratios"]["transformers sdpa"]
        assert math.isclose(ratio["tokens_per_s"], ours["tokens_per_s"] / theirs["tokens_per_s"])
        assert math.isclose(ratio["peak_memory"], ours["peak_gb"] / theirs["peak_gb"])
        # same weights, same targets: our token-mean loss is stock transformers' (its packing is block-diagonal)
        assert ratio["loss_token_mean_abs_diff"] < 2e-2, ratio
    for r in stages["loss_memory_64k"]["rows"]:
        assert r["ours"]["peak_gb"] < r["transformers"]["peak_gb"], r  # no (T, V) fp32 logits
        assert math.isclose(r["peak_ratio"], r["ours"]["peak_gb"] / r["transformers"]["peak_gb"])
    assert set(data["goals"]) == set(bench.GOALS)
    assert all(goal["value"] is not None and goal["met"] in (True, False) for goal in data["goals"].values())
    assert data["goals"]["parity"]["met"] is True


def test_a_failing_or_slow_stage_is_recorded_and_the_rest_runs(tmp_path, monkeypatch, capsys):
    bench = load_bench()

    def oom(self, rec):
        rec["n"] = 8192
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (test)")

    def slow(self, rec):
        rec["rows"] = [{"vocab": 32000, "tokens": 65536}]
        time.sleep(30)

    monkeypatch.setattr(bench.Run, "matmul", oom)
    monkeypatch.setattr(bench.Run, "loss_memory", slow)
    monkeypatch.setitem(bench.BOXES, "loss_memory_64k", 4)  # --smoke divides the time boxes by 4: 1 s
    out = tmp_path / "partial.json"
    t0 = time.monotonic()
    bench.main(["--smoke", "--out", str(out), "--stages", "env,matmul,loss_memory_64k"])
    assert time.monotonic() - t0 < 20
    stages = json.loads(out.read_text())["stages"]
    assert stages["env"]["status"] == "ok"
    assert stages["matmul"]["status"] == "error" and stages["matmul"]["error"].startswith("OutOfMemoryError")
    assert stages["matmul"]["n"] == 8192  # what a stage recorded before it failed stays
    assert stages["loss_memory_64k"]["status"] == "timeout" and stages["loss_memory_64k"]["rows"]
    assert stages["train_64k"] == {"status": "skipped", "why": "not in --stages"}
    table = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["matmul", "error"] for line in table)  # the table says so too

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--out", str(tmp_path / "full.json")])
    assert exit_.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
