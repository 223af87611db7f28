"""Batched greedy answers against one answer at a time, side by side: the same prompts, the same model.

Run as:
    python bench/bench_generation.py --model_name_or_path data/smollm2-135m-instruct \
        [--num_prompts 8 --prompt_words 150 --max_new_tokens 32 --batch_size 8]

Both sides answer the same prompts (a document of standard-library prose from tools/demo_data.py and a
question, all of about the same length, as the Needle test's prompts of one length are) with
longalign.generation.Generator: one `generate` call per prompt, then `generate_batch` over batch_size of them.
Every answer is forced to max_new_tokens tokens (min_new_tokens), so both sides decode the same number of
steps. Prints prefill tokens, seconds per side, ms per answer token and the speed ratio, and checks the
answers are equal.
"""

import random
import time
from dataclasses import dataclass, field

import torch

from longalign.generation import Generator
from longalign.scriptargs import parse_args, run_main
from tools import demo_data


@dataclass
class Args:
    model_name_or_path: str = field(metadata={"help": "model folder (e.g. data/smollm2-135m-instruct)"})
    num_prompts: int = field(default=8, metadata={"help": "prompts answered by each side"})
    prompt_words: int = field(default=150, metadata={"help": "words of prose per prompt"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens per answer (every answer is this long)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per batch on the batched side"})


def prompts(n: int, words: int) -> list[list[dict]]:
    rng, paragraphs = random.Random(0), demo_data.held_out_paragraphs()
    return [[{"role": "user", "content": f"{demo_data.document(rng, paragraphs, words, [])}\n\nSummarise the "
                                         f"document above in one sentence."}] for _ in range(n)]


def main(argv=None) -> dict:
    (args,) = run_main(lambda a: parse_args((Args,), a), argv)
    gen = Generator(args.model_name_or_path, template="auto", max_new_tokens=args.max_new_tokens, temperature=0)
    real_generate = gen.model.generate
    gen.model.generate = lambda **kw: real_generate(**kw, min_new_tokens=kw["max_new_tokens"])  # fixed length
    convs = prompts(args.num_prompts, args.prompt_words)
    gen.generate(convs[0], max_new_tokens=2)  # warm-up: first-call costs belong to neither side

    t = time.perf_counter()
    one = [gen.generate(c) for c in convs]
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    batched = [a for i in range(0, len(convs), args.batch_size) for a in gen.generate_batch(convs[i:i + args.batch_size])]
    t_batch = time.perf_counter() - t

    tokens = sum(a["prompt_tokens"] for a in one)
    answer_tokens = args.num_prompts * args.max_new_tokens
    same = sum(a["text"] == b["text"] for a, b in zip(one, batched, strict=True))
    result = {"prompts": args.num_prompts, "prompt_tokens": tokens, "answer_tokens": answer_tokens,
              "one_at_a_time_s": round(t_one, 2), "batched_s": round(t_batch, 2),
              "speedup": round(t_one / t_batch, 2), "equal_answers": same, "threads": torch.get_num_threads()}
    print(f"{args.num_prompts} prompts ({tokens} prompt tokens), {args.max_new_tokens} answer tokens each, "
          f"{torch.get_num_threads()} threads:")
    print(f"  one at a time   {t_one:7.2f} s  ({1000 * t_one / answer_tokens:6.1f} ms per answer token, prefill included)")
    print(f"  batches of {args.batch_size:<3}  {t_batch:7.2f} s  ({1000 * t_batch / answer_tokens:6.1f} ms per answer token, prefill included)")
    print(f"  batched / one at a time: {t_one / t_batch:.2f}x faster; answers equal: {same}/{args.num_prompts}")
    return result


if __name__ == "__main__":
    main()
