"""Needle test, step 2: the model answers every prompt of prompts.jsonl.

In-process (HF generate, the model's own chat template via --template auto) or through any
OpenAI-compatible server (--gen_base_url). Resumable: answers already in predictions.jsonl are kept and
never generated again; the file never holds two answers for one (length, depth).

Run as:
    python Needle_test/pred.py --model_name_or_path THUDM/LongAlign-7B-64k --prompts_file runs/needle/prompts/prompts.jsonl \
        --output_dir runs/needle/longalign-7b
    (defaults come from Needle_test/config-pred.yaml; every key is also a flag)

Inputs: prompts.jsonl from prompt.py. Outputs: <output_dir>/predictions.jsonl, one line per prompt:
context_length, depth_percent, context_tokens, prompt_tokens, prediction, needle, retrieval_question,
model, template.
"""

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from longalign.generation import TEMPLATES, Generator, JsonlTable, read_jsonl
from longalign.scriptargs import UserError, parse_args, run_main

CONFIG = Path(__file__).with_name("config-pred.yaml")


@dataclass
class Args:
    model_name_or_path: str | None = field(default=None, metadata={"help": "model folder or hub id (its tokenizer must be the one prompt.py used)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder if the model folder has none (default: the model's)"})
    prompts_file: str = field(default="runs/needle/prompts/prompts.jsonl", metadata={"help": "prompts.jsonl from prompt.py"})
    output_dir: str = field(default="runs/needle/pred", metadata={"help": "where predictions.jsonl goes"})
    template: str = field(default="auto", metadata={"help": "chat format: auto | chat_template | llama | chatglm | none"})
    gen_base_url: str | None = field(default=None, metadata={"help": "answer through this OpenAI-compatible server instead of in-process"})
    gen_model: str | None = field(default=None, metadata={"help": "model name served at --gen_base_url"})
    max_new_tokens: int = field(default=64, metadata={"help": "longest answer in tokens (the needle is one sentence)"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (deterministic)"})
    seed: int = field(default=42, metadata={"help": "generation seed, reset per prompt"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow a tokenizer that is the checkpoint's own code (not needed for ChatGLM3)"})
    batch_size: int = field(default=1, metadata={"help": "greedy, in-process: answer this many prompts as one padded batch (1 = one at a time; a batch multiplies the KV cache of long prompts)"})

    def __post_init__(self):
        if not self.model_name_or_path:
            raise UserError("--model_name_or_path is required (a model folder or hub id)")
        if self.template not in TEMPLATES:
            raise UserError(f"--template {self.template} is not one of {'|'.join(TEMPLATES)}; pick one")
        if self.batch_size < 1:
            raise UserError(f"--batch_size {self.batch_size} must be >= 1")


def cell(row: dict) -> tuple:
    """The key of one heatmap cell."""
    return (row["context_length"], row["depth_percent"])


def main(argv=None):
    (args,) = parse_args(Args, argv, default_config=CONFIG)
    prompts = read_jsonl(Path(args.prompts_file), "Needle_test/prompt.py")
    table = JsonlTable(Path(args.output_dir) / "predictions.jsonl", key=cell)
    todo = [p for p in prompts if cell(p) not in table]
    print(f"needle predictions: {len(prompts) - len(todo)} done, {len(todo)} to generate -> {table.path}")
    if not todo:
        return table
    gen = Generator.from_args(args, args.max_new_tokens, args.temperature, args.seed)
    bar = tqdm(total=len(todo), desc="needle pred")
    for start in range(0, len(todo), args.batch_size):  # each batch is written before the next starts
        batch = todo[start:start + args.batch_size]
        for p, out in zip(batch, gen.generate_batch([p["messages"] for p in batch]), strict=True):
            table.append({k: p[k] for k in ("context_length", "depth_percent", "context_tokens", "needle",
                                            "retrieval_question")}
                         | {"prompt_tokens": out["prompt_tokens"], "prediction": out["text"],
                            "model": args.gen_model or args.model_name_or_path, "template": gen.template})
        bar.update(len(batch))
    bar.close()
    return table


if __name__ == "__main__":
    run_main(main)
