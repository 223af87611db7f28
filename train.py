"""Full-parameter SFT of a long-context chat model: HF Trainer + DeepSpeed, naive / sort / pack batching,
and the loss of every optimizer step computed exactly (paper Eq. 2-4) on 1 or N devices.

Run as:
    python train.py --model_name_or_path MODEL --train_dir data/<model>/<datanum> --output_dir OUT \\
        --batch_method naive|sort|pack [--pack_loss] [--loss_reduction sequence|token] [--balance]
        [--sequence_parallel_size N] ...
    torchrun --nproc_per_node 8 train.py ... --deepspeed ds_config/stage3.json      (one node)
    deepspeed --hostfile hostfile train.py ... --deepspeed ds_config/stage3.json   (several nodes)
Every transformers.TrainingArguments flag works (--learning_rate, --warmup_steps 0.03, --bf16, ...), with
the generic defaults that are traps here changed (LongAlignTrainingArguments): --per_device_train_batch_size 1,
--logging_steps 1, --remove_unused_columns false. scripts/train_*.sh hold the paper's rows.

Inputs:
    --model_name_or_path  a decoder-only causal LM (longalign.models.load_model: our model files for the Llama family
                          and ChatGLM, longalign/any_model.py for the others; docs/models.md lists what works)
    --train_dir           a folder from pre_tokenize.py (meta.json + store) and, for sort/pack,
                          sort_and_group.py --group_size K (K = world size / N x per-device batch)
Outputs (in --output_dir):
    run_config.json       resolved arguments, package versions, hardware (written at every start)
    checkpoint-N/         written atomically (staged, then renamed); re-running the same command resumes
                          from the last one, --resume_from_checkpoint picks one
    model.safetensors + config.json + tokenizer   the final model, consolidated also under ZeRO-3
    train_results.json    the Trainer's final metrics (train_runtime in seconds, train_loss, ...)
    one line per logged step on stdout: "[train] step S/T loss .. lr .. seqs .. target_tokens .. tokens/s ..",
    then "[train] summary: train_runtime .." and "[train] done: ..."; the progress bar (stderr) stays below them

How the loss is owned. longalign/schedule.py gives every target token the weight w_t of Eq. 2, 3 or 4
computed from the totals of its WHOLE optimizer step (all ranks, all micro-batches, read from the store
and the plan, no all-reduce); the model returns sum_t w_t CE_t; `LongAlignTrainer` turns off the
Trainer's own normalisation (no num_items_in_batch, no division by accumulation steps) and the weights
carry a factor W (world size) that undoes the average DDP/DeepSpeed take over ranks. With
--sequence_parallel_size N the N ranks of a group each hold a slice of the same row (longalign/sequence_parallel.py):
their slice losses add up to the row's, so the weights and the factor W stay as they are. The weights reach the
loss in fp32 in every precision (--bf16, --fp16): LongAlignTrainer keeps them out of the Trainer's DeepSpeed cast.
"""

import contextlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints

from longalign.batches import Collator, ScheduleSampler, SlotDataset
from longalign.schedule import Schedule
from longalign.scriptargs import UserError, parse_args, run_main

STAGING = ".checkpoint-staging"  # checkpoints are written here, then renamed into place


# ---------------------------------------------------------------------------------------------
# Arguments

@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "hub id or local folder of the model to fine-tune"})
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = field(
        default="float32", metadata={"help": "dtype the weights are loaded in; bfloat16 halves the memory of "
                                             "loading (with DeepSpeed --bf16 the optimizer keeps fp32 master weights)"})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "attention kernel passed to from_pretrained (default: the model file's; the "
                                        "families of longalign/any_model.py always use its own)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow a checkpoint's own code (ChatGLM3 / LongAlign-6B need none: longalign/tokenization.py builds their tokenizer)"})


@dataclass
class DataArguments:
    train_dir: str = field(metadata={"help": "folder written by pre_tokenize.py (+ sort_and_group.py for sort/pack)"})
    batch_method: Literal["naive", "sort", "pack"] = field(
        default="naive", metadata={"help": "naive: shuffled sequences; sort: the sort plan's groups of similar "
                                           "length; pack: the pack plan's packs, one row each (paper §3.3)"})
    pack_loss: bool = field(default=False, metadata={
        "help": "with pack: loss weighting (Eq. 4), every sequence weighs the same; without it a pack's token "
                "mean is averaged over packs (Eq. 3, the original's default)"})
    loss_reduction: Literal["sequence", "token"] = field(default="sequence", metadata={
        "help": "sequence: the mean over sequences of each sequence's token mean (Eq. 2); token: the mean over "
                "all target tokens of the optimizer step"})
    balance: bool = field(default=False, metadata={
        "help": "pack: the pack plan must have been built with sort_and_group.py --balance (even cost per step)"})
    max_length: int | None = field(default=None, metadata={
        "help": "the L the sort/pack plan was built for (default: the store's max_length)"})
    sequence_parallel_size: int = field(default=1, metadata={
        "help": "N: Ulysses sequence parallelism, each sequence or pack split over N ranks (DeepSpeed's "
                "all-to-all around attention); N divides the world size and the attention/KV heads, and the "
                "plan's K is world size / N x per-device batch"})

    def __post_init__(self):
        if self.batch_method != "pack" and (self.pack_loss or self.balance):
            raise UserError(f"--pack_loss and --balance only apply to --batch_method pack, not "
                            f"{self.batch_method}: drop them or use --batch_method pack")


@dataclass
class LongAlignTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults that cannot hurt this recipe (the paper's hyperparameters
    stay in scripts/paper_setup.sh): the generic ones are traps here."""
    output_dir: str = field(metadata={  # required: transformers would write into ./trainer_output
        "help": "the run folder: run_config.json, the checkpoints, the final model and its tokenizer"})
    per_device_train_batch_size: int = field(default=1, metadata={
        "help": "sequences (naive, sort) or packs (pack) per device per micro-step; 1 as in the paper: the "
                "generic 8 would put eight 64k packs in one row, out of memory on the first step"})
    logging_steps: float = field(default=1, metadata={
        "help": "one [train] line every N optimizer steps (a paper run has a few hundred steps; the generic "
                "500 would show almost none)"})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "must stay false: the batches carry loss_weights and cu_seqlens, which the model's forward takes"})


# ---------------------------------------------------------------------------------------------
# Data: the store, the plan, and the schedule of every epoch

def read_plan(data_args: DataArguments, store, K: int) -> dict:
    """The sort or pack plan of --train_dir, checked against K and L; a clear error when it does not fit."""
    from longalign import packing

    folder = Path(data_args.train_dir)
    read = packing.read_sort_plan if data_args.batch_method == "sort" else packing.read_pack_plan
    path = folder / (packing.SORT_PLAN if data_args.batch_method == "sort" else packing.PACK_PLAN)
    L = data_args.max_length or store.meta["max_length"]
    fix = f"run `python sort_and_group.py --train_dir {folder} --group_size {K} --max_length {L}" \
          f"{' --balance' if data_args.balance else ''}`"
    if not path.is_file():
        raise UserError(f"{path} does not exist (--batch_method {data_args.batch_method} needs it): {fix}")
    plan = read(path)
    if plan["group_size"] != K:
        raise UserError(f"{path} was built for K = {plan['group_size']} devices per step but this run has "
                        f"K = world size / --sequence_parallel_size x --per_device_train_batch_size = {K}: {fix}")
    if plan["max_length"] != L:
        raise UserError(f"{path} was built for max_length {plan['max_length']}, not {L}: {fix}, "
                        f"or pass --max_length {plan['max_length']}")
    if data_args.batch_method == "pack" and bool(plan.get("balance")) != data_args.balance:
        built = "with" if plan.get("balance") else "without"
        raise UserError(f"{path} was built {built} --balance but this run {'asks for' if data_args.balance else 'does not ask for'} "
                        f"it: {fix}, or {'drop' if data_args.balance else 'add'} --balance")
    return plan


def build_schedule(data_args: DataArguments, args: TrainingArguments, store) -> Schedule:
    W, B, N = args.world_size, args.per_device_train_batch_size, data_args.sequence_parallel_size
    if N < 1 or W % N:
        raise UserError(f"--sequence_parallel_size {N} must divide the world size {W}: launch a multiple of {N} "
                        f"processes or change N")
    K = W // N * B  # the N ranks of a sequence-parallel group share each unit
    reduction = data_args.loss_reduction
    if data_args.batch_method == "pack" and not data_args.pack_loss:
        reduction = "pack_mean"  # Eq. 3
    kwargs = {}
    if data_args.batch_method == "sort":
        kwargs["groups"] = read_plan(data_args, store, K)["groups"]
    elif data_args.batch_method == "pack":
        plan = read_plan(data_args, store, K)
        kwargs.update(groups=plan["steps"], packs=plan["packs"])
    seed = args.data_seed if args.data_seed is not None else args.seed
    return Schedule(data_args.batch_method, store.num_target_tokens, store.lengths, world_size=W, per_device=B,
                    accumulation=args.gradient_accumulation_steps, seed=seed, reduction=reduction,
                    sequence_parallel=N, **kwargs)


# ---------------------------------------------------------------------------------------------
# The Trainer: our data order, our loss normalisation, atomic checkpoints, one log line per step

class _FinalSummaryOnly:
    """The Trainer's own printing of its logs, kept for the final summary (train_runtime, ...): every logged step
    already has its [train] line (LongAlignTrainer.log), and the Trainer's dict of the same step doubled it."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" not in logs:
            values = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items()
                               if k != "total_flos")
            tqdm.write(f"[train] summary: {values}", file=sys.stdout)  # above the progress bar, not through it


class _Progress(_FinalSummaryOnly, ProgressCallback):
    pass


class _Printer(_FinalSummaryOnly, PrinterCallback):  # --disable_tqdm true
    pass


class LongAlignTrainer(Trainer):
    # The loss returned by compute_loss is already normalised over the whole optimizer step (the weights
    # hold 1/M or 1/T of the step): the Trainer must not divide it by the accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, schedule: Schedule, sampler: ScheduleSampler, **kwargs):
        super().__init__(*args, **kwargs)
        for generic, ours in ((ProgressCallback, _Progress), (PrinterCallback, _Printer)):
            if self.pop_callback(generic) is not None:
                self.add_callback(ours)
        self.schedule, self.sampler = schedule, sampler
        self._staging: str | None = None
        self._log_from_step, self._log_time = 0, None  # the clock starts at the first training step

    def _get_train_sampler(self, train_dataset=None):
        return self.sampler

    # Why this exists: with DeepSpeed the Trainer casts EVERY floating-point batch tensor to the engine's dtype
    # (Trainer._prepare_input, transformers 5.24). The loss weights would reach the loss in bf16 (8 bits of
    # mantissa: each sequence's Eq. 2-4 weight off by up to 0.39 %, the same for all its tokens, a bias) or
    # fp16, and shifted under sequence parallelism they crashed the loss. They skip that cast and reach the
    # loss exactly as Schedule computed them, fp32 on the device (longalign/loss.py refuses anything less).
    FP32_INPUTS = ("loss_weights", "shift_loss_weights")

    def _prepare_inputs(self, inputs):
        weights = {k: v for k, v in inputs.items() if k in self.FP32_INPUTS}
        inputs = super()._prepare_inputs({k: v for k, v in inputs.items() if k not in self.FP32_INPUTS})
        inputs.update({k: v.to(self.args.device) for k, v in weights.items()})
        return inputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Eq. 2 / 3 / 4 are in inputs["loss_weights"] (longalign/schedule.py, Schedule.step_coefficients):
        # w_t = W/(M*N_i) (sequence), W/T (token) or W/(P*T_p) (pack without --pack_loss). The model returns
        # sum_t w_t CE_t over this micro-batch, un-normalised. Summed over A micro-batches (the Trainer does not
        # divide: loss_is_scaled_for_ga) and averaged over W ranks (DDP/DeepSpeed gradient averaging; with
        # DeepSpeed the Trainer passes scale_wrt_gas=False), the gradient is exactly that of the step's loss.
        # num_items_in_batch is never computed: the model sets accepts_loss_kwargs = False (see main).
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def training_step(self, *args, **kwargs):
        if self._log_time is None:
            self._log_time = time.perf_counter()
        return super().training_step(*args, **kwargs)

    # -- one greppable line per logged step, with what the step trained on --------------------
    def log(self, logs: dict, start_time: float | None = None) -> None:
        if "loss" in logs:
            step = self.state.global_step
            self._log_from_step = max(self._log_from_step, getattr(self, "_initial_global_step", 0))
            stats = [self.step_stats(s) for s in range(self._log_from_step + 1, step + 1)]
            now = time.perf_counter()
            tokens = sum(s.tokens for s in stats)
            logs["sequences"] = sum(s.sequences for s in stats)
            logs["target_tokens"] = sum(s.target_tokens for s in stats)
            logs["tokens_per_second"] = round(tokens / max(now - self._log_time, 1e-9), 1)
            self._log_from_step, self._log_time = step, now
            if self.is_world_process_zero():  # tqdm.write: a line of its own, also under the progress bar
                tqdm.write(f"[train] step {step}/{self.state.max_steps} epoch {self.state.epoch:.2f} "
                      f"loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0.0):.3e} "
                      f"grad_norm {logs.get('grad_norm', float('nan')):.3f} seqs {logs['sequences']} "
                      f"target_tokens {logs['target_tokens']} tokens {tokens} "
                      f"tokens/s {logs['tokens_per_second']:.1f}", file=sys.stdout)
        super().log(logs, start_time)

    def step_stats(self, global_step: int):
        """Stats of optimizer step `global_step` (1-based), from the deterministic schedule."""
        epoch, s = divmod(global_step - 1, self.schedule.num_steps)
        cached = getattr(self, "_stats_cache", None)
        if cached is None or cached[0] != epoch:
            self._stats_cache = cached = (epoch, self.schedule.step_stats(epoch))
        return cached[1][s]

    # -- atomic checkpoints: staged in output_dir/.checkpoint-staging, renamed when complete ------
    def _get_output_dir(self, trial):
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        name = f"checkpoint-{self.state.global_step}"
        run_dir = Path(super()._get_output_dir(trial))
        self._staging = str(run_dir / STAGING)
        try:
            super()._save_checkpoint(model, trial)  # every rank writes its part into the staging folder
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()
        staged, final = run_dir / STAGING / name, run_dir / name
        if self.args.should_save and staged.is_dir():  # (with --save_on_each_node on a shared disk: once)
            if final.exists():  # a re-run after resuming from an earlier checkpoint rewrites this step
                old = run_dir / STAGING / f"{name}.old"
                os.replace(final, old)
                os.replace(staged, final)
                shutil.rmtree(old)
            else:
                os.replace(staged, final)  # a directory rename: a reader sees all of it or nothing
            with contextlib.suppress(OSError):
                (run_dir / STAGING).rmdir()  # only when empty
            rotate_checkpoints(str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------
# Run folder: resolved arguments and versions; where to resume from

def write_run_config(path: Path, model_args, data_args, args: TrainingArguments, resume: str | None) -> None:
    import accelerate

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                "numpy": np.__version__}
    try:
        import deepspeed

        versions["deepspeed"] = deepspeed.__version__
    except ImportError:
        versions["deepspeed"] = None
    hardware = {"platform": platform.platform(), "cpus": os.cpu_count(), "world_size": args.world_size,
                "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    config = {"argv": sys.argv, "resume_from_checkpoint": resume, "model": asdict(model_args),
              "data": asdict(data_args), "training": args.to_dict(), "versions": versions, "hardware": hardware}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def find_resume_checkpoint(args: TrainingArguments) -> str | None:
    """--resume_from_checkpoint PATH, else the last complete checkpoint in --output_dir, else None."""
    if args.resume_from_checkpoint:
        if not (Path(args.resume_from_checkpoint) / "trainer_state.json").is_file():
            raise UserError(f"--resume_from_checkpoint {args.resume_from_checkpoint} is not a complete "
                            f"checkpoint folder (no trainer_state.json): pass a checkpoint-N folder of a run")
        return args.resume_from_checkpoint
    if not Path(args.output_dir).is_dir():
        return None
    return get_last_checkpoint(args.output_dir)  # only renamed, i.e. complete, checkpoints match checkpoint-N


# ---------------------------------------------------------------------------------------------
# Main

def main(argv=None) -> dict:
    """Parse the three argument groups (also from --config FILE.yaml) and train; user errors exit 2."""
    return run_main(lambda a: run(*parse_args((ModelArguments, DataArguments, LongAlignTrainingArguments), a)), argv)


def cpu_supports_fp16() -> bool:
    """Whether this CPU computes in float16, decided as DeepSpeed's CPU accelerator decides it
    (`is_fp16_supported`: oneDNN's fp16 check; true with AVX-512 FP16 or AMX, false on an AVX2-only x86-64)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch build without oneDNN
        return False


def run(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    from longalign import any_model
    from longalign.models import load_model, model_config, refusal
    from longalign.store import TokenizedStore

    # 1. inputs: the model's config, the store, the plan, the schedule (errors before anything is written or loaded)
    if args.remove_unused_columns:
        raise UserError("--remove_unused_columns true would drop the batches' loss_weights and cu_seqlens, which "
                        "the model takes: leave it false")
    if args.fp16 and (args.use_cpu or not torch.cuda.is_available()) and not cpu_supports_fp16():
        # DeepSpeed would stop at its first step ("Type fp16 is not supported on your device"), after the load
        raise UserError("--fp16 needs a CPU with float16 support (AVX-512 FP16 or AMX; oneDNN reports none on "
                        "this one): use --bf16 true instead, or train on a GPU")
    config_dict = model_config(model_args.model_name_or_path)
    if (why := refusal(config_dict)) is not None:  # every batch carries loss weights; a stock model ignores them
        raise UserError(f"{model_args.model_name_or_path}: {why}")
    if not (Path(data_args.train_dir) / "meta.json").is_file():
        raise UserError(f"--train_dir {data_args.train_dir} has no meta.json: run pre_tokenize.py "
                        f"--output_dir {data_args.train_dir} first")
    store = TokenizedStore(data_args.train_dir)
    schedule = build_schedule(data_args, args, store)
    resume = find_resume_checkpoint(args)
    output_dir = Path(args.output_dir)
    if args.should_save:
        shutil.rmtree(output_dir / STAGING, ignore_errors=True)  # a half-written checkpoint of a killed run
        previous = output_dir / "run_config.json"
        before = json.loads(previous.read_text())["data"] if resume and previous.is_file() else None
        if before and "train_file" in before:  # a run_config.json from before --train_file became --train_dir
            before["train_dir"] = before.pop("train_file")
        if before and before != asdict(data_args):
            print(f"[train] warning: the data arguments differ from those in {previous}: the resumed run "
                  f"will not continue the same data order", flush=True)
        write_run_config(output_dir / "run_config.json", model_args, data_args, args, resume)
    if resume and args.should_save:
        step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"]
        print(f"[train] resuming from {resume} (global step {step}); start over with a new --output_dir",
              flush=True)

    # 2. model: the file by config.model_type; the Trainer must not normalise the loss itself
    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    load_kwargs = {"dtype": dtype, "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    model = load_model(model_args.model_name_or_path, **load_kwargs)
    model.accepts_loss_kwargs = False  # no num_items_in_batch: the loss weights already normalise the step
    packed = data_args.batch_method == "pack"
    if isinstance(model, any_model.PackedCausalLM) and (why := any_model.unsupported(model, packed)) is not None:
        raise UserError(f"{model_args.model_name_or_path}: {why}")  # before the first step, not inside it
    if store.meta.get("vocab_size", 0) > model.config.vocab_size:
        raise UserError(f"{data_args.train_dir} was tokenized with a vocabulary of {store.meta['vocab_size']} "
                        f"but {model_args.model_name_or_path} has {model.config.vocab_size}: re-run "
                        f"pre_tokenize.py with --model_name_or_path {model_args.model_name_or_path}")
    N = data_args.sequence_parallel_size
    if N > 1:  # every attention layer trades sequence for heads around our packed attention (DeepSpeed Ulysses)
        from longalign import sequence_parallel

        try:
            sequence_parallel.enable(model, N, batch_size=1 if data_args.batch_method == "pack"
                                     else args.per_device_train_batch_size)
        except ValueError as e:
            raise UserError(f"{e} ({model_args.model_name_or_path}): choose another --sequence_parallel_size") from None

    # 3. train
    sampler = ScheduleSampler(schedule)
    pad_id = store.meta.get("pad_token_id")
    pad_id = pad_id if pad_id is not None else store.meta.get("eos_token_id", 0)
    trainer = LongAlignTrainer(model=model, args=args, train_dataset=SlotDataset(store, sampler),
                               data_collator=Collator(data_args.batch_method == "pack", pad_id,
                                                      sp_rank=args.process_index % N, sp_size=N),
                               schedule=schedule, sampler=sampler)
    if args.should_save:
        print(f"[train] {data_args.batch_method}{' + pack_loss' if data_args.pack_loss else ''}: {len(store)} "
              f"sequences, {schedule.num_steps} optimizer steps per epoch, K = {schedule.K} "
              f"(world {args.world_size} / SP {N} x batch {args.per_device_train_batch_size}), accumulation "
              f"{args.gradient_accumulation_steps}, loss {schedule.reduction}", flush=True)
    result = trainer.train(resume_from_checkpoint=resume)

    # 4. the final model, consolidated (ZeRO-3 gathers it: stage3_gather_16bit_weights_on_model_save)
    trainer.save_model(args.output_dir)
    trainer.save_metrics("train", result.metrics)  # train_results.json: train_runtime, ... (scripts/reproduce.py)
    if args.should_save:
        save_tokenizer(model_args, store, args.output_dir)
        print(f"[train] done: {result.global_step} steps, train loss {result.training_loss:.4f}, model -> "
              f"{args.output_dir}", flush=True)
    return {"global_step": result.global_step, "train_loss": result.training_loss}


def save_tokenizer(model_args: ModelArguments, store, output_dir: str) -> None:
    """Next to the model, so evaluation loads both from one folder (from the model, else the store's)."""
    from longalign.tokenization import load_tokenizer

    for source in (model_args.model_name_or_path, store.meta.get("tokenizer")):
        if source is None:
            continue
        try:  # ChatGLM3 checkpoints come out as a plain tokenizer.json folder: no remote code to evaluate them
            tokenizer = load_tokenizer(source, trust_remote_code=model_args.trust_remote_code)
        except UserError:
            continue
        tokenizer.save_pretrained(output_dir)
        return
    print(f"[train] no tokenizer found with {model_args.model_name_or_path}: copy one into {output_dir}", flush=True)


def shut_down_distributed() -> None:
    """Leave the process group before the interpreter exits. Left to the exit handlers, gloo's threads can
    abort a process whose run succeeded (SIGABRT, "terminate called without an active exception"; seen once
    in 2-process tests), and torchrun then reports the whole job as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    shut_down_distributed()
