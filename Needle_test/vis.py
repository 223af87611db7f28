"""Needle test, step 4: the heatmap (depth x context length, score 1-10, red -> yellow -> green).

Run as:
    python Needle_test/vis.py --scores_file runs/needle/pred/scores.jsonl --output_file runs/needle/pred/heatmap.png

Inputs: scores.jsonl from eval.py. Output: a PNG (matplotlib, Agg backend: no display needed); the
mean score is printed and written in the title.
"""

from dataclasses import dataclass, field
from pathlib import Path

from longalign.generation import read_jsonl
from longalign.scriptargs import parse_args, run_main

# The original's colours: red (1) -> yellow -> green (10).
COLOURS = ["#F0496E", "#EBB839", "#0CD79F"]


@dataclass
class Args:
    scores_file: str = field(default="runs/needle/pred/scores.jsonl", metadata={"help": "scores.jsonl from eval.py"})
    output_file: str | None = field(default=None, metadata={"help": "PNG to write (default: heatmap.png next to the scores)"})
    title: str = field(default="Needle in a haystack", metadata={"help": "first line of the title"})


def grid(rows: list[dict]) -> tuple[list[int], list[float], list[list[float | None]]]:
    """(lengths, depths, mean score per [depth][length]; None where nothing was scored)."""
    lengths = sorted({r["context_length"] for r in rows})
    depths = sorted({r["depth_percent"] for r in rows})
    cells: dict = {}
    for r in rows:
        if r.get("score") is not None:
            cells.setdefault((r["depth_percent"], r["context_length"]), []).append(r["score"])
    mean = [[sum(v) / len(v) if (v := cells.get((d, n))) else None for n in lengths] for d in depths]
    return lengths, depths, mean


def main(argv=None):
    (args,) = parse_args(Args, argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    rows = read_jsonl(Path(args.scores_file), "Needle_test/eval.py")
    lengths, depths, mean = grid(rows)
    values = np.array([[np.nan if v is None else v for v in row] for row in mean], dtype=float)  # (depths, lengths)
    scored = values[~np.isnan(values)]
    overall = float(scored.mean()) if scored.size else float("nan")

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(lengths) + 3), max(4, 0.45 * len(depths) + 2)))
    # Cells without a score are grey, not a colour that reads as a score.
    cmap = LinearSegmentedColormap.from_list("needle", COLOURS).with_extremes(bad="#D0D0D0")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=1, vmax=10, aspect="auto")
    if values.size <= 400:  # small grids: write each cell's score in it
        for (i, j), v in np.ndenumerate(values):
            if not np.isnan(v):
                ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("Context length (tokens)")
    ax.set_ylabel("Needle depth (%)")
    ax.set_title(f"{args.title}\nmean score {overall:.2f} / 10")
    fig.colorbar(im, ax=ax, label="Score")
    fig.tight_layout()
    out = Path(args.output_file or Path(args.scores_file).with_name("heatmap.png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"needle heatmap: {len(depths)} depths x {len(lengths)} lengths, mean score {overall:.2f} -> {out}")
    return overall


if __name__ == "__main__":
    run_main(main)
