"""Offline LongBench (v1) cases in LongBench's own data format, made by the project (nothing published is copied).

LongBench's data.zip holds one jsonl file per task; each line is

    {"input": question ("" for gov_report, multi_news, vcsum), "context": the long text,
     "answers": [reference answer, ...], "length": words of context + input (characters for Chinese),
     "dataset": task, "language": "en" | "zh", "all_classes": null, "_id": hex id}

This writes such files for the 12 tasks of the three groups the paper reports (single-document QA,
multi-document QA, summarization), English and Chinese. Every answer needs the context:

    QA tasks             one fact among look-alikes of the same shape ("The harbor server listens on port
                         4127." next to the same sentence about other subjects and ports); the question
                         asks about one subject; the answer is its value
    multi-document QA    the same, the facts spread over numbered passages ("Passage 1:" / "文章1")
    summarization        a report, news passages or a meeting transcript whose key sentences are facts
                         about one subject among others; the reference summary restates those sentences
                         (qmsum: the query names the subject)

English prose comes from the standard library's docstrings (tools.demo_data, read at run time), Chinese
prose from a small word list below; the same seed writes the same files.

Run as:
    python -m tools.synthetic_longbench --output_dir runs/longbench_data [--num_cases 4 --context_words 400 --seed 0]
"""

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from longalign.scriptargs import UserError, parse_args, run_main
from tools import demo_data

# task -> (language, kind); the groups as lm-eval's _longbench_{single,multi,summarization}.yaml list them
TASKS = {
    "narrativeqa": ("en", "qa"), "qasper": ("en", "qa"), "multifieldqa_en": ("en", "qa"),
    "multifieldqa_zh": ("zh", "qa"),
    "hotpotqa": ("en", "passages"), "2wikimqa": ("en", "passages"), "musique": ("en", "passages"),
    "dureader": ("zh", "passages"),
    "gov_report": ("en", "summary"), "qmsum": ("en", "query"), "multi_news": ("en", "news"),
    "vcsum": ("zh", "meeting"),
}

# ---------------------------------------------------------------------------------------------
# Chinese: filler sentences from a word list, facts of a few shapes ({s} subject, {v} value)

ZH_TIMES = ("上周", "昨天", "本月初", "周一上午", "去年年底", "今年春天", "前天下午", "月底")
ZH_TEAMS = ("项目组", "技术部", "市场部", "委员会", "研究小组", "设计团队", "客服中心", "财务部", "运营团队", "实验室")
ZH_VERBS = ("讨论了", "检查了", "更新了", "整理了", "评估了", "安排了", "测试了", "记录了", "修改了", "汇总了")
ZH_OBJECTS = ("年度计划", "服务器配置", "用户反馈", "预算报告", "产品原型", "培训材料", "安全策略", "数据备份",
              "会议纪要", "测试方案", "采购清单", "招聘计划")
ZH_LINKS = ("随后", "同时", "此外", "会后", "最后")
ZH_SUBJECTS = ("镜像", "归档", "备份", "上传", "搜索", "邮件", "代理", "缓存", "索引", "导出", "账单", "报表",
               "同步", "打印", "登录", "日志", "天气", "花园", "图书馆", "港口")
ZH_VALUES = {
    "port": [str(n) for n in range(1031, 9973, 37)],
    "person": ["王磊", "李娜", "张伟", "刘洋", "陈静", "赵敏", "孙强", "周婷", "吴昊", "郑丽", "冯博", "何佳"],
    "city": ["里斯本", "奥斯陆", "内罗毕", "利马", "大阪", "都柏林", "塔林", "波尔图", "珀斯", "卑尔根"],
    "weekday": ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"],
}
ZH_FAMILIES = {  # statement, question, value kind
    "port": ("{s}服务器监听的端口是{v}。", "{s}服务器监听的端口是多少？", "port"),
    "author": ("{s}解析器是由{v}编写的。", "{s}解析器是谁编写的？", "person"),
    "city": ("{s}档案的副本保存在{v}。", "{s}档案的副本保存在哪里？", "city"),
    "weekday": ("{s}摘要每周{v}重新生成。", "{s}摘要每周哪一天重新生成？", "weekday"),
}


def zh_sentence(rng: random.Random) -> str:
    a, b = rng.sample(ZH_TEAMS, 2)
    return (f"{rng.choice(ZH_TIMES)}{a}{rng.choice(ZH_VERBS)}{rng.choice(ZH_OBJECTS)}，"
            f"{rng.choice(ZH_LINKS)}{b}{rng.choice(ZH_VERBS)}{rng.choice(ZH_OBJECTS)}。")


def zh_document(rng: random.Random, num_chars: int, facts: list[str]) -> str:
    """About num_chars characters of filler, the facts inserted at random sentence boundaries."""
    sentences = []
    while sum(map(len, sentences)) < num_chars:
        sentences.append(zh_sentence(rng))
    for fact in facts:
        sentences.insert(rng.randint(0, len(sentences)), fact)
    return "".join(sentences)


def zh_facts(rng: random.Random, family: str, n: int) -> list[tuple[str, str]]:
    """n (subject, value) pairs of one Chinese family, distinct subjects and values."""
    return list(zip(rng.sample(ZH_SUBJECTS, n), rng.sample(ZH_VALUES[ZH_FAMILIES[family][2]], n), strict=True))


def zh_statement(family: str, subject: str, value: str) -> str:
    return ZH_FAMILIES[family][0].format(s=subject, v=value)


# ---------------------------------------------------------------------------------------------
# One case per kind: (input, context, answers)

def lookalikes(rng: random.Random, lang: str) -> tuple[str, list[str], str, str]:
    """(question, statements of 3-6 look-alike facts with the asked one first, asked value, asked statement)."""
    if lang == "zh":
        family = rng.choice(list(ZH_FAMILIES))
        facts = zh_facts(rng, family, rng.randint(3, 6))
        (subject, value), say = facts[0], zh_statement
        ask = ZH_FAMILIES[family][1].format(s=subject)
    else:
        family = rng.choice(list(demo_data.FAMILIES))
        facts = demo_data.draw_facts(rng, family, rng.randint(3, 6))
        (subject, value), say = facts[0], demo_data.statement
        ask = demo_data.question(family, subject)
    return ask, [say(family, s, v) for s, v in facts], value, say(family, subject, value)


def en_text(rng: random.Random, paragraphs: list[str], words: int, facts: list[str]) -> str:
    return demo_data.document(rng, paragraphs, words, facts)


def qa_case(rng, lang, paragraphs, words) -> tuple[str, str, list[str]]:
    ask, statements, value, _ = lookalikes(rng, lang)
    rng.shuffle(statements)
    text = zh_document(rng, 2 * words, statements) if lang == "zh" else en_text(rng, paragraphs, words, statements)
    return ask, text, [value]


def passages_case(rng, lang, paragraphs, words) -> tuple[str, str, list[str]]:
    """3-5 passages; the look-alike facts dealt over them. dureader's answers are whole sentences."""
    ask, statements, value, fact = lookalikes(rng, lang)
    rng.shuffle(statements)
    n = rng.randint(3, 5)
    parts = [statements[i::n] for i in range(n)]
    if lang == "zh":
        docs = [f"文章{i + 1}\n标题：{rng.choice(ZH_OBJECTS)}\n{zh_document(rng, 2 * words // n, p)}"
                for i, p in enumerate(parts)]
        return ask, "\n".join(docs), [fact]
    docs = [f"Passage {i + 1}:\n{rng.choice(demo_data.SUBJECTS).capitalize()}\n{en_text(rng, paragraphs, words // n, p)}"
            for i, p in enumerate(parts)]
    return ask, "\n".join(docs), [value]


def key_facts(rng: random.Random, lang: str, k: int, others: int) -> tuple[str, list[str], list[str]]:
    """(subject, k statements about it from k families, statements about other subjects)."""
    if lang == "zh":
        families = rng.sample(list(ZH_FAMILIES), k)
        subject = rng.choice(ZH_SUBJECTS)
        key = [zh_statement(f, subject, rng.choice(ZH_VALUES[ZH_FAMILIES[f][2]])) for f in families]
        rest = [zh_statement(f, s, v) for f in families for s, v in zh_facts(rng, f, others) if s != subject]
        return subject, key, rest
    families = rng.sample(list(demo_data.FAMILIES), k)
    subject = rng.choice(demo_data.SUBJECTS)
    key = [demo_data.statement(f, subject, v) for f in families for _, v in demo_data.draw_facts(rng, f, 1)]
    rest = [demo_data.statement(f, s, v) for f in families
            for s, v in demo_data.draw_facts(rng, f, others, exclude=(subject,))]
    return subject, key, rest


def summary_case(rng, lang, paragraphs, words, kind) -> tuple[str, str, list[str]]:
    """A text whose key sentences are about one subject; the reference summary restates them in order."""
    subject, key, rest = key_facts(rng, lang, 3, 0 if kind in ("summary", "meeting") else 2)
    statements = key + rest
    if kind == "meeting":  # vcsum: a Chinese meeting transcript, speakers taking turns
        people = rng.sample(ZH_VALUES["person"], 3)
        lines = [f"{rng.choice(people)}：{zh_sentence(rng)}" for _ in range(max(3, 2 * words // 30))]
        for s in statements:
            lines.insert(rng.randint(0, len(lines)), f"{rng.choice(people)}：我们确定，{s}")
        summary = "会议确定：" + "".join(key)
        return "", "\n".join(lines), [summary]
    summary = " ".join(key)
    if kind == "query":  # qmsum: a meeting transcript; the query names the subject
        people = rng.sample(demo_data.VALUES["person"], 3)
        turns = re.split(r"(?<=\.)\s+", en_text(rng, paragraphs, words, statements))  # one sentence a turn
        text = "\n".join(f"{rng.choice(people)}: {t}" for t in turns if t)
        return f"What did the meeting decide about the {subject}?", text, [summary]
    if kind == "news":  # multi_news: news passages, the key facts dealt over them
        n = rng.randint(2, 4)
        docs = [en_text(rng, paragraphs, words // n, statements[i::n]) for i in range(n)]
        return "", "\n".join(f"Passage {i + 1}:\n{d}" for i, d in enumerate(docs)), [summary]
    return "", en_text(rng, paragraphs, words, statements), [summary]


def make_case(task: str, index: int, rng: random.Random, paragraphs: list[str], words: int, seed: int) -> dict:
    lang, kind = TASKS[task]
    if kind == "qa":
        question, context, answers = qa_case(rng, lang, paragraphs, words)
    elif kind == "passages":
        question, context, answers = passages_case(rng, lang, paragraphs, words)
    else:
        question, context, answers = summary_case(rng, lang, paragraphs, words, kind)
    # LongBench's length: English words, Chinese characters
    length = len(question + context) if lang == "zh" else len(f"{question} {context}".split())
    _id = hashlib.sha256(f"{task}-{seed}-{index}".encode()).hexdigest()[:48]
    return {"input": question, "context": context, "answers": answers, "length": length, "dataset": task,
            "language": lang, "all_classes": None, "_id": _id}


def write_cases(out: Path, num_cases: int = 4, context_words: int = 400, seed: int = 0,
                tasks: tuple[str, ...] = tuple(TASKS)) -> Path:
    """out/<task>.jsonl for each task: num_cases cases of about context_words words (Chinese: twice as
    many characters). Each task has its own seeded generator, so a task's file does not depend on the others."""
    paragraphs = demo_data.held_out_paragraphs()
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        rng = random.Random(f"{seed}-{task}")
        rows = [make_case(task, i, rng, paragraphs, context_words, seed) for i in range(num_cases)]
        with open(out / f"{task}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return out


@dataclass
class Args:
    output_dir: str = field(metadata={"help": "folder for <task>.jsonl (alias --out)"})
    num_cases: int = field(default=4, metadata={"help": "cases per task"})
    context_words: int = field(default=400, metadata={"help": "about this many words per context (Chinese: 2x characters)"})
    seed: int = field(default=0, metadata={"help": "seed of the texts and facts"})

    def __post_init__(self):
        if self.num_cases < 1 or self.context_words < 20:
            raise UserError("--num_cases must be >= 1 and --context_words >= 20; fix the flag")


def main(argv=None):
    (args,) = run_main(lambda a: parse_args((Args,), a, aliases={"--out": "--output_dir"}), argv)
    write_cases(Path(args.output_dir), args.num_cases, args.context_words, args.seed)
    print(f"synthetic_longbench: {args.num_cases} cases x {len(TASKS)} tasks of ~{args.context_words} words "
          f"-> {args.output_dir}")


if __name__ == "__main__":
    main()
