"""A run SIGKILLed in the middle of writing a checkpoint, then re-run with the same command, resumes from the
last complete checkpoint (and says so) and ends with the weights of an uninterrupted run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import (
    delta,
    make_store,
    one_thread,  # noqa: F401  (autouse fixture)
    rel,
    train_argv,
    weights,
)

import train

ROOT = Path(__file__).resolve().parents[1]
KILL_AT = 10  # 12 sequences, accumulation 2, 2 epochs = 12 steps; 10 lies mid-epoch 2

# The child saves checkpoints 2, 4, 6, 8 and dies by SIGKILL while writing checkpoint-10 (after the model and
# the optimizer, before the RNG state and trainer_state.json): a real crash, at a deterministic point.
CHILD = f"""
import os, signal, sys
import train
save_rng = train.LongAlignTrainer._save_rng_state
def die_at_step(self, output_dir):
    if self.state.global_step == {KILL_AT}:
        os.kill(os.getpid(), signal.SIGKILL)
    return save_rng(self, output_dir)
train.LongAlignTrainer._save_rng_state = die_at_step
train.main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer_dir):
    return make_store(tmp_path_factory.mktemp("resume"), tokenizer_dir, num_long=2, num_short=10, long_min_words=40)


def argv(model_dir, store, out, *extra):
    return train_argv(model_dir, store, out, "--batch_method", "naive", "--per_device_train_batch_size", 1,
                      "--gradient_accumulation_steps", 2, "--num_train_epochs", 2, "--learning_rate", "1e-3",
                      "--warmup_steps", 2, "--lr_scheduler_type", "cosine", "--adam_beta2", "0.95",
                      "--save_strategy", "steps", "--save_steps", 2, *extra)


def test_sigkill_then_rerun_resumes_exactly(tmp_path, store, tiny_llama_dir, capsys):
    from longalign.store import TokenizedStore

    assert len(TokenizedStore(store)) == 12
    full = tmp_path / "uninterrupted"
    assert train.main(argv(tiny_llama_dir, store, full))["global_step"] == 12
    reference = delta(weights(full), weights(tiny_llama_dir))

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    child = subprocess.run([sys.executable, "-c", CHILD, *argv(tiny_llama_dir, store, out)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-3000:]
    assert (out / train.STAGING / f"checkpoint-{KILL_AT}").is_dir()    # the half-written one...
    assert not (out / f"checkpoint-{KILL_AT}").exists()                # ...never under its final name
    assert (out / "checkpoint-8" / "trainer_state.json").is_file()
    capsys.readouterr()

    # the same command again: resumes from checkpoint-8 and says so
    assert train.main(argv(tiny_llama_dir, store, out))["global_step"] == 12
    log = capsys.readouterr().out
    assert f"[train] resuming from {out / 'checkpoint-8'} (global step 8)" in log
    steps = [int(x.split()[2].split("/")[0]) for x in log.splitlines() if x.startswith("[train] step ")]
    assert steps == [9, 10, 11, 12]
    with capsys.disabled():
        assert rel(delta(weights(out), weights(tiny_llama_dir)), reference, "SIGKILL at step 10 + re-run vs uninterrupted "
                   "(12 AdamW steps, update from the initial weights)") <= 1e-6
    assert not (out / train.STAGING).exists()

    # --resume_from_checkpoint picks an earlier one (epoch 1): same end point
    assert train.main(argv(tiny_llama_dir, store, out, "--resume_from_checkpoint", out / "checkpoint-4"))[
        "global_step"] == 12
    assert "(global step 4)" in capsys.readouterr().out
    with capsys.disabled():
        assert rel(delta(weights(out), weights(tiny_llama_dir)), reference, "--resume_from_checkpoint checkpoint-4 vs "
                   "uninterrupted") <= 1e-6

    # negative control: replaying epoch 2 from its start instead of skipping what was trained ends elsewhere
    train.main(argv(tiny_llama_dir, store, out, "--resume_from_checkpoint", out / "checkpoint-8",
                    "--ignore_data_skip", "true"))
    assert rel(delta(weights(out), weights(tiny_llama_dir)), reference, "negative control: resume with "
               "--ignore_data_skip (replays the epoch) vs uninterrupted") > 1e-3
