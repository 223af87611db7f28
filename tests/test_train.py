"""train.py in-process: one plain-SGD optimizer step over the same sequences is the same for naive, sort and
pack + --pack_loss, equal to a brute-force per-sequence reference (transformers' LlamaForCausalLM), while
pack without --pack_loss (Eq. 3) is not; clear errors; the run folder and the log line."""

import json

import pytest
from train_helpers import (
    SGD,
    delta,
    make_store,
    one_thread,  # noqa: F401  (autouse fixture)
    reference_sgd_delta,
    rel,
    train_argv,
    weights,
    with_plan,
)

import train

TOL = 1e-4      # relative, on the whole parameter update
ALL = 64        # accumulation larger than any epoch here: the whole store is ONE optimizer step


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("train")
    store = make_store(root, tokenizer_dir)
    return {"plain": store, 1: with_plan(store, root / "k1", K=1), 2: with_plan(store, root / "k2", K=2)}


@pytest.fixture(scope="module")
def reference(stores, tiny_llama_dir):
    return reference_sgd_delta(tiny_llama_dir, stores["plain"])


def one_step(tmp_path, model_dir, train_file, name, *flags) -> dict:
    out = tmp_path / name
    result = train.main(train_argv(model_dir, train_file, out, *SGD, "--gradient_accumulation_steps", ALL, *flags))
    assert result["global_step"] == 1
    return delta(weights(out), weights(model_dir))


def test_naive_matches_brute_force_and_logs_the_step(tmp_path, stores, tiny_llama_dir, reference, capsys):
    d = one_step(tmp_path, tiny_llama_dir, stores["plain"], "naive", "--batch_method", "naive",
                 "--per_device_train_batch_size", 1)
    # observability: one greppable line with what the step trained on, the run folder
    from longalign.store import TokenizedStore

    store = TokenizedStore(stores["plain"])
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if x.startswith("[train] step ")]
    assert not [x for x in out.splitlines() if not x.startswith("[train] ")], out  # no Trainer dict per step
    assert "[train] summary: train_runtime " in out and "[train] done: " in out
    with capsys.disabled():
        assert rel(d, reference, "SGD step, naive (batch 1, accumulation) vs per-sequence reference") <= TOL
    assert len(lines) == 1, lines
    assert f" seqs {int((store.num_target_tokens > 0).sum())} " in lines[0]
    assert f" target_tokens {int(store.num_target_tokens.sum())} " in lines[0]
    assert " loss " in lines[0] and " lr " in lines[0] and " tokens/s " in lines[0]
    config = json.loads((tmp_path / "naive" / "run_config.json").read_text())
    assert config["data"]["batch_method"] == "naive" and config["versions"]["transformers"]
    assert (tmp_path / "naive" / "tokenizer_config.json").is_file()


def test_one_line_per_step_beside_the_progress_bar(tmp_path, stores, tiny_llama_dir, capsys):
    """With the progress bar on (the default), each logged step is still one [train] line on stdout, not two."""
    train.main(train_argv(tiny_llama_dir, stores["plain"], tmp_path / "bar", *SGD, "--disable_tqdm", "false",
                          "--max_steps", 2))
    out = capsys.readouterr().out.splitlines()
    assert [x.split()[2] for x in out if x.startswith("[train] step ")] == ["1/2", "2/2"], out
    assert not [x for x in out if not x.startswith("[train] ")], out  # the bar is on stderr, no dicts anywhere


def test_naive_padded_batch_matches(tmp_path, stores, tiny_llama_dir, reference):
    d = one_step(tmp_path, tiny_llama_dir, stores["plain"], "naive_b3", "--batch_method", "naive",
                 "--per_device_train_batch_size", 3)  # rows padded; the last micro-batch holds a dummy
    assert rel(d, reference, "SGD step, naive (batch 3, padded) vs per-sequence reference") <= TOL


def test_sort_matches(tmp_path, stores, tiny_llama_dir, reference):
    d = one_step(tmp_path, tiny_llama_dir, stores[2], "sort", "--batch_method", "sort",
                 "--per_device_train_batch_size", 2, "--activation_checkpointing", "true")
    assert rel(d, reference, "SGD step, sort (K = 2, gradient checkpointing) vs per-sequence reference") <= TOL


def test_pack_with_loss_weighting_matches_and_without_differs(tmp_path, stores, tiny_llama_dir, reference):
    from longalign.packing import PACK_PLAN, read_pack_plan

    plan = read_pack_plan(stores[1] / PACK_PLAN)
    assert len(plan["packs"]) >= 3  # several packs of different fill in the step: M per pack would show
    d = one_step(tmp_path, tiny_llama_dir, stores[1], "pack_loss", "--batch_method", "pack", "--pack_loss",
                 "--per_device_train_batch_size", 1)
    assert rel(d, reference, f"SGD step, pack + --pack_loss ({len(plan['packs'])} packs) vs per-sequence reference") <= TOL
    # two packs per row (B = 2), same objective
    d2 = one_step(tmp_path, tiny_llama_dir, stores[2], "pack_loss_b2", "--batch_method", "pack", "--pack_loss",
                  "--per_device_train_batch_size", 2)
    assert rel(d2, reference, "SGD step, pack + --pack_loss (2 packs per row) vs per-sequence reference") <= TOL
    # negative control: Eq. 3 (the original's pack loss) is another objective
    d3 = one_step(tmp_path, tiny_llama_dir, stores[1], "pack_eq3", "--batch_method", "pack",
                  "--per_device_train_batch_size", 1)
    assert rel(d3, reference, "SGD step, pack WITHOUT --pack_loss (Eq. 3) vs per-sequence reference") >= 1e-2


def test_token_reduction_matches_its_reference(tmp_path, stores, tiny_llama_dir):
    d = one_step(tmp_path, tiny_llama_dir, stores[2], "sort_token", "--batch_method", "sort",
                 "--per_device_train_batch_size", 2, "--loss_reduction", "token")
    token_reference = reference_sgd_delta(tiny_llama_dir, stores["plain"], reduction="token")
    assert rel(d, token_reference, "SGD step, sort --loss_reduction token vs token-mean reference") <= TOL


@pytest.mark.parametrize("flags,needle", [
    (["--batch_method", "sort", "--per_device_train_batch_size", "1"], "K = 2 devices per step but this run has K = "),
    (["--batch_method", "naive", "--pack_loss"], "--pack_loss and --balance only apply to --batch_method pack"),
    (["--batch_method", "pack", "--balance", "--per_device_train_batch_size", "2"], "built without --balance"),
])
def test_mismatch_is_one_clear_sentence(tmp_path, stores, tiny_llama_dir, capsys, flags, needle):
    with pytest.raises(SystemExit) as e:
        train.main(train_argv(tiny_llama_dir, stores[2], tmp_path / "x", *flags))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err


def test_missing_plan_and_store_are_clear(tmp_path, stores, tiny_llama_dir, capsys):
    for train_file, needle in ((stores["plain"], "sort_and_group.py"), (tmp_path, "pre_tokenize.py")):
        with pytest.raises(SystemExit) as e:
            train.main(train_argv(tiny_llama_dir, train_file, tmp_path / "x", "--batch_method", "pack"))
        assert e.value.code == 2
        assert needle in capsys.readouterr().err
