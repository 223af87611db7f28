"""train.py with a recorder on the loss: what reaches the loss, per rank and micro-step, dumped for
tests/test_paper_config.py. Several runs share one launch (DeepSpeed's import and process start are paid once).

Run as:
    torchrun --nproc_per_node 2 tests/paper_config_run.py RUNS.json
Input:  RUNS.json, a list of {"capture": DIR, "argv": [train.py flags]}, run in order in the same processes.
Output: DIR/rank{r}-{n:03d}.pt for the n-th forward of rank r that computes a loss: {"global_step": optimizer
        steps done before it, "input_ids": the model's input, and the loss's own arguments as the output layer
        (longalign.loss.LMHead) received them: "labels", "loss_weights", "cu_seqlens" or, under sequence
        parallelism, "shift_labels", "shift_loss_weights"}, tensors in the dtype that arrived; and the "loss"
        it returned.
        Each run's train.main result goes to DIR/result.json (rank 0).
"""

import inspect
import json
import sys
from pathlib import Path

import torch

import train
from longalign.loss import LMHead

state = {"capture": None, "count": 0, "step": None, "input_ids": None}

# -- the recorder: the loss's arguments, as the output layer receives them --------------------------------
lm_head_forward = LMHead.forward
signature = inspect.signature(lm_head_forward)


def recording_forward(self, *args, **kwargs):
    bound = signature.bind(self, *args, **kwargs).arguments
    out = lm_head_forward(self, *args, **kwargs)
    if bound.get("labels") is not None or bound.get("shift_labels") is not None:
        record = {"global_step": state["step"], "input_ids": state["input_ids"], "loss": out[0].detach().cpu()}
        for name in ("labels", "loss_weights", "cu_seqlens", "shift_labels", "shift_loss_weights"):
            if bound.get(name) is not None:
                record[name] = bound[name].detach().cpu()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        torch.save(record, Path(state["capture"]) / f"rank{rank}-{state['count']:03d}.pt")
        state["count"] += 1
    return out


LMHead.forward = recording_forward

# -- which optimizer step and input each forward belongs to ------------------------------------------------
compute_loss = train.LongAlignTrainer.compute_loss


def noting_compute_loss(self, model, inputs, *args, **kwargs):
    state["step"], state["input_ids"] = self.state.global_step, inputs["input_ids"].detach().cpu()
    return compute_loss(self, model, inputs, *args, **kwargs)


train.LongAlignTrainer.compute_loss = noting_compute_loss

if __name__ == "__main__":
    for run in json.loads(Path(sys.argv[1]).read_text()):
        state.update(capture=run["capture"], count=0)
        Path(run["capture"]).mkdir(parents=True, exist_ok=True)
        result = train.main(run["argv"])
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            (Path(run["capture"]) / "result.json").write_text(json.dumps(result))
    train.shut_down_distributed()
