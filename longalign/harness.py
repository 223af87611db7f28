"""lm-evaluation-harness adapters: LongBench (v1) with our model behind lm-eval's `LM` interface, LongBench's own
truncation and LongBench's own data files served to lm-eval's own tasks; and, for the general stage
(OpenLLM/eval.py), a resumable log-likelihood cache in front of lm-eval's own model classes.

lm-eval (0.4.13) owns the prompts (each task's `doc_to_text`), the answer lengths (`max_gen_toks`), the
metrics (`process_results`: LongBench's qa_f1 / rouge, ported) and the group means. This module owns what
lm-eval would otherwise do differently from LongBench's pred.py:

    lm-eval's HFLM.generate_until       tokens of the (chat-formatted) prompt, LEFT-truncated to the last
                                         max_length - max_gen_toks: the head (the instructions, the start
                                         of the document, the chat header) is what goes
    LongBench pred.py (and LongBenchLM)  the RAW prompt is cut in the MIDDLE to max_length tokens of the
                                         model's tokenizer, decoded, and only then put in the chat format;
                                         greedy decoding; the answer decoded without special tokens

    truncate_longbench   the middle cut, exactly as pred.py does it (see its docstring for the details)
    LongBenchLM          lm_eval.api.model.LM: generate_until = truncate, chat format (Generator), greedy;
                         every answer goes to a resumable JSONL table keyed by (task, doc id, prompt hash)
    task_configs         lm-eval task/group YAMLs that `include` the installed ones unchanged; with a local
                         --data_dir, a task only gets a different data source (`custom_dataset`)
    local_longbench      that data source: one of LongBench's own jsonl files (data.zip), whose question
                         field is `input`; lm-eval's prompts read `question` (its hub copy,
                         Xnhyacinth/LongBench, renamed it), so each doc gets question = input

    local_splits         the general stage's data source: local JSONL files in each hub dataset's own fields
    CachedLoglikelihoodLM  log-likelihoods from a resumable table, the missing ones from a backend LM that is
                         only built when one is missing
"""

import hashlib
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lm_eval.api.model import LM
from tqdm import tqdm

from longalign.scriptargs import UserError

LONGBENCH_FIELDS = ("input", "context", "answers")  # what the prompts and metrics read; LongBench has more


# ---------------------------------------------------------------------------------------------
# lm-eval's own LongBench tasks and groups

def lm_eval_longbench_dir() -> Path:
    """The installed lm-eval's tasks/longbench folder (its task and group YAMLs, metrics.py)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / "longbench"


def lm_eval_groups(names: tuple[str, ...] = ("single", "multi", "summarization")) -> dict[str, list[str]]:
    """{"single": ["narrativeqa", ...], ...}: each group's tasks as lm-eval's group YAML lists them."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = {}
    for name in names:
        cfg = load_yaml(lm_eval_longbench_dir() / f"_longbench_{name}.yaml", resolve_func=False)
        out[name] = [t.removeprefix("longbench_") for t in cfg["task"]]
    return out


def _not_metadata_advice(record) -> bool:
    return "Custom kwargs can be passed" not in record.getMessage()


def quiet_lm_eval() -> None:
    """lm-eval's INFO lines would bury the progress bar; with local data (lm-eval's custom_dataset) it also
    advises --metadata for every task, which our data sources do not take."""
    import logging

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    logging.getLogger("lm_eval.api.task").addFilter(_not_metadata_advice)


def task_configs(folder: Path, tasks: list[str], groups: list[str], data_dir: Path | None) -> Path:
    """Write into `folder` one YAML per task and per group, each `include`-ing lm-eval's installed file as
    it is (prompt, answer length, metric, aggregation); with data_dir a task's data comes from
    data_dir/<task>.jsonl instead of the hub. lm-eval indexes only this folder (fast, and no task is
    defined twice)."""
    src = lm_eval_longbench_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()  # a task left from an earlier run with other --tasks must not be indexed
    for group in groups:
        (folder / f"_longbench_{group}.yaml").write_text(
            f"include: {json.dumps(str(src / f'_longbench_{group}.yaml'))}\n", encoding="utf-8")
    for task in tasks:
        lines = [f"include: {json.dumps(str(src / f'{task}.yaml'))}"]
        if data_dir is not None:
            lines += ["custom_dataset: !function longalign.harness.local_longbench",
                      "dataset_kwargs:", f"  data_file: {json.dumps(str(data_dir / f'{task}.jsonl'))}"]
        (folder / f"{task}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def read_cases(data_file: str | Path, fields: tuple[str, ...], fix: str) -> list[dict]:
    """The objects of a local JSONL data file, each checked to hold `fields`; a malformed line or an empty file
    is a UserError naming the file and line, then `fix`."""
    rows = []
    with open(data_file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{data_file} line {n} is not valid JSON; {fix}") from None
            missing = [k for k in fields if not isinstance(row, dict) or k not in row]
            if missing:
                raise UserError(f"{data_file} line {n} lacks {', '.join(missing)}; its lines need "
                                f"{', '.join(fields)} ({fix})")
            rows.append(row)
    if not rows:
        raise UserError(f"{data_file} holds no cases; {fix}")
    return rows


def local_longbench(data_file: str, **_task_metadata) -> dict:
    """lm-eval's `custom_dataset`: {"test": Dataset} from one of LongBench's jsonl files, question = input.
    A malformed line is a UserError naming the file and line."""
    import datasets

    rows = read_cases(data_file, LONGBENCH_FIELDS, "LongBench lines also have length, dataset, language, "
                      "all_classes, _id; fix the file or re-extract LongBench's data.zip")
    return {"test": datasets.Dataset.from_list([{**row, "question": row["input"]} for row in rows])}


def local_splits(folder: str, splits: list[str], fields: list[str], **_task_metadata) -> dict:
    """lm-eval's `custom_dataset` for the general stage: {split: Dataset} from folder/<split>.jsonl, each line one
    row of the hub dataset the task loads (its own field names, so the task's prompts and process_docs read
    it unchanged); OpenLLM/eval.py says which splits and fields each task needs."""
    import datasets

    fix = "write the hub dataset's rows there (OpenLLM/README.md) or python -m tools.synthetic_general"
    return {s: datasets.Dataset.from_list(read_cases(Path(folder) / f"{s}.jsonl", tuple(fields), fix)) for s in splits}


# ---------------------------------------------------------------------------------------------
# LongBench's truncation

def counts_special_tokens(tokenizer) -> bool:
    """Whether LongBench counts the tokenizer's own special tokens (a Llama <s>) in the prompt's length:
    pred.py tokenizes with them, except for ChatGLM3, whose prompt it tokenizes without (ChatGLM3's chat
    builder adds [gMASK] sop itself). A chatglm-format tokenizer is recognised by its [gMASK] token."""
    return "[gMASK]" not in getattr(tokenizer, "all_special_tokens", ())


def truncate_longbench(text: str, tokenizer, max_length: int, special_tokens: bool = True) -> tuple[str, int, bool]:
    """(text, tokens counted before truncation, truncated?) as LongBench's pred.py cuts a prompt:

        ids = tokenizer(text)                     special tokens counted (special_tokens; not for ChatGLM3)
        if len(ids) > max_length:                 half = max_length // 2
            text = decode(ids[:half]) + decode(ids[-half:])      each half decoded on its own, specials skipped

    It differs from longalign.generation.truncate_text_middle (LongBench-Chat's cut) in three details: the
    special tokens are counted (a Llama <s> takes one of the head's tokens, then is dropped by the decode);
    both halves are max_length // 2 (an odd max_length keeps one token less); the halves are decoded apart
    (a SentencePiece tail then loses its first space, as in LongBench)."""
    if max_length < 2:
        raise ValueError("max_length must be >= 2: LongBench keeps max_length // 2 tokens at each end")
    ids = tokenizer(text, add_special_tokens=special_tokens)["input_ids"]
    if len(ids) <= max_length:
        return text, len(ids), False
    half = max_length // 2
    head = tokenizer.decode(ids[:half], skip_special_tokens=True)
    tail = tokenizer.decode(ids[len(ids) - half:], skip_special_tokens=True)
    return head + tail, len(ids), True


def prompt_sha(text: str) -> str:
    """The key part that ties a cached answer to its prompt: a changed prompt is generated again."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The model as lm-eval's LM

class LongBenchLM(LM):
    """lm-eval's LM over a longalign.generation.Generator (in-process or an OpenAI-compatible server).

    generate_until(requests): for each (context, gen_kwargs) — context is the task's doc_to_text, no
    chat template applied by lm-eval — cut the middle to max_length tokens (truncate_longbench), put it
    in the chat format (Generator: --template, or the server's), decode greedily for the task's
    max_gen_toks (capped by max_new_tokens_cap), cut at the task's stop strings (none in these tasks).
    Answers already in `table` under (task, doc id, prompt hash) are served from it; `generated` and
    `cached` count the answers made and served, `truncated` the prompts that were cut."""

    def __init__(self, generator, max_length: int, table, max_new_tokens_cap: int | None = None,
                 concurrency: int = 1, batch_size: int = 1):
        super().__init__()
        self.gen, self.max_length, self.table = generator, max_length, table
        self.cap, self.concurrency, self.batch_size = max_new_tokens_cap, concurrency, batch_size
        self.generated = self.cached = self.truncated = 0

    @staticmethod
    def key(task: str, doc_id: int, context: str) -> tuple:
        return task, doc_id, prompt_sha(context)

    def prepare(self, request) -> tuple[int, list, str, int, bool]:
        """One request -> (answer length, stop strings, the cut prompt, its tokens before the cut, whether cut)."""
        from lm_eval.models.utils import normalize_gen_kwargs

        context, gen_kwargs = request.args
        # greedy whatever the YAML says (LongBench decodes greedily; lm-eval's YAMLs say do_sample: False),
        # so the sampling keys are dropped before lm-eval's reading of the answer length and stop strings
        kwargs = normalize_gen_kwargs({k: v for k, v in gen_kwargs.items() if k not in ("do_sample", "temperature")})
        max_new = kwargs["max_gen_toks"] if self.cap is None else min(self.cap, kwargs["max_gen_toks"])
        tokenizer = self.gen.tokenizer
        text, n_tokens, truncated = truncate_longbench(context, tokenizer, self.max_length,
                                                       counts_special_tokens(tokenizer))
        return max_new, kwargs["until"], text, n_tokens, truncated

    def answer(self, batch: list) -> list[dict]:
        """[(request, prepare(request))] of one answer length -> their rows for the table (greedy; in-process one
        padded batch, Generator.generate_batch)."""
        from lm_eval.models.utils import postprocess_generated_text

        outs = self.gen.generate_batch([[{"role": "user", "content": text}] for _, (_, _, text, _, _) in batch],
                                       max_new_tokens=batch[0][1][0], temperature=0.0)
        return [{"task": r.task_name, "doc_id": r.doc_id, "prompt_sha": prompt_sha(r.args[0]), "_id": r.doc.get("_id"),
                 "prediction": postprocess_generated_text(out["text"], until, None), "input_tokens": n_tokens,
                 "truncated": truncated, "prompt_tokens": out["prompt_tokens"], "max_new_tokens": max_new,
                 "template": self.gen.template}
                for (r, (max_new, until, _, n_tokens, truncated)), out in zip(batch, outs, strict=True)]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        keys = [self.key(r.task_name, r.doc_id, r.args[0]) for r in requests]
        todo = [r for r, k in zip(requests, keys, strict=True) if k not in self.table]
        self.cached += len(requests) - len(todo)
        print(f"predictions: {len(requests) - len(todo)} cached, {len(todo)} to generate -> {self.table.path}")
        if todo:
            # in-process: batch_size requests of one answer length and similar prompt lengths at a time (a batch
            # is padded to its longest prompt); a server takes `concurrency` requests at once
            prepared = sorted(((r, self.prepare(r)) for r in todo), key=lambda x: (x[1][0], x[1][3]))
            batches = []
            for _, same in itertools.groupby(prepared, key=lambda x: x[1][0]):
                same = list(same)
                batches += [same[i:i + self.batch_size] for i in range(0, len(same), self.batch_size)]
            with ThreadPoolExecutor(self.concurrency) as pool, \
                    tqdm(total=len(todo), desc="generate", disable=disable_tqdm) as bar:
                for rows in pool.map(self.answer, batches):
                    for row in rows:
                        self.table.append(row)
                    self.generated += len(rows)
                    bar.update(len(rows))
        rows = [self.table.rows[k] for k in keys]
        self.truncated += sum(r["truncated"] for r in rows)
        return [r["prediction"] for r in rows]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("LongBench's tasks only generate; this adapter has no loglikelihood")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("LongBench's tasks only generate; this adapter has no loglikelihood_rolling")


# ---------------------------------------------------------------------------------------------
# Log-likelihoods (the general stage: ARC, HellaSwag, TruthfulQA, MMLU), resumable

def loglikelihood_key(context: str, continuation: str) -> str:
    """A request's key in the table: its exact text (context and continuation apart: where one ends matters)."""
    return hashlib.sha256(json.dumps([context, continuation]).encode("utf-8")).hexdigest()[:32]


class CachedLoglikelihoodLM(LM):
    """lm-eval's LM for multiple-choice tasks: loglikelihood(requests) -> [(log p(continuation | context),
    is greedy)], the values of a backend LM (lm-eval's HFLM over our model, or its completions-API client),
    each written to a resumable JSONL table keyed by the request's text as soon as its chunk is done. Requests
    already in the table are served from it, and the backend is only built (the model only loaded) when one
    is missing: a re-run computes and loads nothing. `computed` and `cached` count this run's requests."""

    CHUNK = 128  # requests per backend call: what a killed run can lose; the backend batches within a chunk

    def __init__(self, make_backend, table):
        super().__init__()
        self.make_backend, self.backend, self.table = make_backend, None, table
        self.computed = self.cached = 0

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        keys = [loglikelihood_key(*r.args) for r in requests]
        todo = {}  # key -> its first request (choices shared by two prompts are computed once)
        for r, k in zip(requests, keys, strict=True):
            if k not in self.table:
                todo.setdefault(k, r)
        self.cached += len(requests) - len(todo)
        print(f"log-likelihoods: {len(requests) - len(todo)} cached, {len(todo)} to compute -> {self.table.path}")
        if todo:
            self.backend = self.backend or self.make_backend()
            items = list(todo.items())
            with tqdm(total=len(items), desc="loglikelihood", disable=disable_tqdm) as bar:
                for start in range(0, len(items), self.CHUNK):
                    chunk = items[start:start + self.CHUNK]
                    values = self.backend.loglikelihood([r for _, r in chunk], disable_tqdm=True)
                    for (k, r), (ll, greedy) in zip(chunk, values, strict=True):
                        self.table.append({"key": k, "task": r.task_name, "doc_id": r.doc_id, "ll": float(ll),
                                           "greedy": bool(greedy)})
                    self.computed += len(chunk)
                    bar.update(len(chunk))
        return [(self.table.rows[k]["ll"], self.table.rows[k]["greedy"]) for k in keys]

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the general stage's tasks are multiple choice; this adapter does not generate")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the general stage's tasks are multiple choice; no rolling log-likelihood here")
