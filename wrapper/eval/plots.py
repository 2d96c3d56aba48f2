"""The report's plots (matplotlib, Agg, loaded only when a report is written): training and eval loss
and learning rate from LLaMA-Factory's trainer_log.jsonl, distributions of the per-row metrics, base vs
merged vs quantized GGUF bars, and the knowledge sets' share right per model with its interval. PNG
bytes; report.md links them, report.html embeds them."""

from __future__ import annotations

import io

from wrapper.core.eval_result import KNOWLEDGE_SETS, SETS, EvalResult, quant_of

COLORS = {"base": "#999999", "merged": "#4c72b0", "gguf": "#dd8452", "lora": "#55a868"}
GGUF_COLORS = ("#dd8452", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#ccb974")  # one per quantized GGUF


def colors(result: EvalResult) -> list[str]:
    """A colour per model scored, in column order; the quantized GGUFs each their own."""
    ggufs = iter(GGUF_COLORS * len(result.kinds))
    return [next(ggufs) if quant_of(kind) else COLORS[kind] for kind in result.kinds]


BAR_METRICS = ("contains", "token_f1", "rouge_l", "key_info_recall", "exact_match")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _figure().close(fig)
    return buffer.getvalue()


def plot_loss(log: list[dict]) -> bytes | None:
    train = [(e["current_steps"], e["loss"]) for e in log if e.get("loss") is not None]
    evals = [(e["current_steps"], e["eval_loss"]) for e in log if e.get("eval_loss") is not None]
    if not train and not evals:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    if train:
        ax.plot(*zip(*train), label="training loss", color=COLORS["merged"])
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color=COLORS["gguf"])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def plot_lr(log: list[dict]) -> bytes | None:
    points = [(e["current_steps"], e["lr"]) for e in log if e.get("lr") is not None]
    if not points:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot(*zip(*points), color="#55a868")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_distributions(result: EvalResult) -> bytes | None:
    rows = [r for r in result.rows if r.get("set") in ("control", "val") and "metrics" in r]
    if not rows:
        return None
    plt = _figure()
    names = ("token_f1", "rouge_l", "key_info_recall")
    fig, axes = plt.subplots(1, len(names), figsize=(10, 3.2), sharey=True)
    bins = [i / 10 for i in range(11)]
    kinds = result.kinds
    for ax, name in zip(axes, names):
        data = [
            [r["metrics"][name] for r in rows if r["model"] == kind and r["metrics"].get(name) is not None]
            for kind in kinds
        ]
        ax.hist(data, bins=bins, label=[result.titles[k] for k in kinds], color=colors(result))
        ax.set_title(f"{name} (control + val rows)")
        ax.set_xlabel(name)
    axes[0].set_ylabel("rows")
    axes[0].legend(fontsize=8)
    return _png(fig)


def plot_bars(result: EvalResult) -> bytes | None:
    groups = []
    kinds = result.kinds
    for set_name in SETS:
        block = result.aggregate.get(set_name, {})
        if not block.get("base", {}).get("rows"):
            continue
        for name in BAR_METRICS:
            if any(block[k].get(name) is not None for k in kinds):
                groups.append((f"{set_name}\n{name}", [block[k].get(name) or 0.0 for k in kinds]))
    if not groups:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups)), 3.6))
    width = 0.8 / len(kinds)
    for offset, (kind, color) in enumerate(zip(kinds, colors(result))):
        xs = [i + (offset - (len(kinds) - 1) / 2) * width for i in range(len(groups))]
        label = result.titles[kind]
        ax.bar(xs, [values[offset] for _, values in groups], width, label=label, color=color)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([label for label, _ in groups], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean per row")
    ax.set_title("Base vs fine-tuned vs GGUF")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_knowledge(result: EvalResult) -> bytes | None:
    """Share right per knowledge set and model, with its 95% interval (eval.json without facts: none)."""
    section = result.knowledge
    if section is None or not section.key_match:
        return None
    kinds = result.kinds
    groups = [(name, section.key_match[name]) for name in KNOWLEDGE_SETS if name in section.key_match]
    plt = _figure()
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(groups)), 3.4))
    width = 0.8 / len(kinds)
    for offset, (kind, color) in enumerate(zip(kinds, colors(result))):
        xs, heights, below, above = [], [], [], []
        for index, (_, scores) in enumerate(groups):
            score = scores.get(kind)
            if score is None or score.accuracy is None:
                continue
            xs.append(index + (offset - (len(kinds) - 1) / 2) * width)
            heights.append(score.accuracy)
            below.append(score.accuracy - (score.low or 0.0))
            above.append((score.high or 0.0) - score.accuracy)
        ax.bar(xs, heights, width, yerr=[below, above], capsize=3, label=result.titles[kind], color=color)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([name.upper() for name, _ in groups])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share right (95% interval)")
    ax.set_title("Does it know the documents?")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def make_plots(log: list[dict], result: EvalResult) -> dict[str, bytes]:
    """The report's PNGs by name, those that have something to show."""
    plots = {
        "loss": plot_loss(log),
        "learning_rate": plot_lr(log),
        "metrics_distribution": plot_distributions(result),
        "base_vs_tuned": plot_bars(result),
        "knowledge": plot_knowledge(result),
    }
    return {name: png for name, png in plots.items() if png}
