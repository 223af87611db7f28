"""Ask a long-context model about a long document, with the answer streamed as it is written.

ChatGLM checkpoints answer through `model.chat` (modeling_chatglm's, in the --template format); every
other model through `--template` (auto: the tokenizer's chat template, else the paper's format of the
family). Either way the prompt ids come from longalign.chat.encode_prompt, the encoder training uses, and
the tokenizer from longalign.tokenization.load_tokenizer (ChatGLM3's without its remote code). A document
longer than --max_length tokens keeps its head and tail. Without --question the demo asks for questions on
stdin and keeps the conversation.

Run as:
    python scripts/chat_demo.py --model_name_or_path THUDM/LongAlign-7B-64k --file paper.txt \
        --question "Summarise the method in three sentences."

Inputs: a model, a text file. Output: the answer on stdout.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from longalign.generation import TEMPLATES, Generator, truncate_text_middle
from longalign.scriptargs import UserError, parse_args, run_main


@dataclass
class Args:
    model_name_or_path: str | None = field(default=None, metadata={"help": "model folder or hub id"})
    file: str | None = field(default=None, metadata={"help": "the long document (UTF-8 text)"})
    question: str | None = field(default=None, metadata={"help": "the question; empty = ask on stdin, several turns"})
    template: str = field(default="auto", metadata={"help": "auto | chat_template | llama | chatglm | none"})
    max_length: int = field(default=64000, metadata={"help": "longest document in tokens (head and tail kept)"})
    max_new_tokens: int = field(default=1024, metadata={"help": "longest answer in tokens"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    seed: int = field(default=42, metadata={"help": "sampling seed"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow a model or tokenizer that is the checkpoint's own code (not needed for ChatGLM3)"})

    def __post_init__(self):
        if not self.model_name_or_path or not self.file:
            raise UserError("--model_name_or_path and --file are required")
        if not Path(self.file).is_file():
            raise UserError(f"--file {self.file} does not exist; give a text file")
        if self.template not in TEMPLATES:
            raise UserError(f"--template {self.template} is not one of {'|'.join(TEMPLATES)}; pick one")


def answer(gen: Generator, messages: list[dict]) -> str:
    """Stream one answer to stdout and return it."""
    from transformers import TextStreamer

    streamer = TextStreamer(gen.tokenizer, skip_prompt=True, skip_special_tokens=True)
    model = gen.model
    if getattr(model.config, "model_type", None) == "chatglm" and gen.template != "none":
        # ChatGLM checkpoints load as modeling_chatglm (longalign.models), whose chat() builds the prompt with
        # chat.encode_prompt in --template's format and passes the streamer on to generate() (raw text,
        # --template none, has no chat turns and goes through gen.generate below).
        response, _ = model.chat(gen.tokenizer, messages[-1]["content"], history=messages[:-1],
                                 template=gen.template, max_new_tokens=gen.max_new_tokens, streamer=streamer,
                                 do_sample=gen.temperature > 0, temperature=gen.temperature or None)
        return response
    return gen.generate(messages, streamer=streamer)["text"]


def main(argv=None):
    (args,) = parse_args(Args, argv)
    gen = Generator(args.model_name_or_path, args.template, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    seed=args.seed, trust_remote_code=args.trust_remote_code)
    document, n_tokens, truncated = truncate_text_middle(Path(args.file).read_text(encoding="utf-8"),
                                                         gen.tokenizer, args.max_length)
    print(f"[{args.file}: {n_tokens} tokens{', middle cut to ' + str(args.max_length) if truncated else ''}; "
          f"template {gen.template} ({gen.template_reason})]", file=sys.stderr)
    messages, question, answers = [], args.question, []
    while True:
        if question is None:
            try:
                question = input("\nquestion> ").strip()
            except EOFError:
                break
            if not question:
                break
        # The document goes with the first question only; later turns build on the conversation.
        messages.append({"role": "user", "content": f"{document}\n\n{question}" if not messages else question})
        answers.append(answer(gen, messages))
        messages.append({"role": "assistant", "content": answers[-1]})
        if args.question:
            break
        question = None
    return answers


if __name__ == "__main__":
    run_main(main)
