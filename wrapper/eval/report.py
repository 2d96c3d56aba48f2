"""Reports from eval.json and the training log: runs/RUN/report.md, a self-contained
runs/RUN/report.html (plots embedded as base64 PNGs), and a comparison of several runs.

Plots (matplotlib, Agg): training and eval loss and learning rate from LLaMA-Factory's
trainer_log.jsonl, distributions of the per-row metrics, and base vs merged vs quantized GGUF bars.
report.md links the same PNGs, written to runs/RUN/report/.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from wrapper.core import manifest
from wrapper.core.errors import FtwError
from wrapper.core.eval_result import SETS, EvalResult
from wrapper.core.fsutil import write_text_atomic
from wrapper.core.ui import console
from wrapper.eval.sets import ADAPTER_MODEL, TABLE_METRICS

COLORS = {"base": "#999999", "merged": "#4c72b0", "gguf": "#dd8452", "lora": "#55a868"}
BAR_METRICS = ("contains", "token_f1", "rouge_l", "key_info_recall", "exact_match")
QUANT_LOSS_TITLE = "Quantization loss (KL divergence from the f16 GGUF, llama.cpp's way)"
TERMINAL_QUANT_COLUMNS = ("quant", "mean KLD", "99% KLD", "same top", "PPL(Q)/PPL(f16)", "Llama-3-8B KLD")


def trainer_log(run_dir: Path) -> list[dict]:
    try:
        output_dir = Path(manifest.plan_of(run_dir).train_args.get("output_dir") or run_dir / "adapter")
    except (FtwError, KeyError, TypeError):
        output_dir = run_dir / "adapter"
    path = output_dir / "trainer_log.jsonl"
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


# ---------------------------------------------------------------------------------------
# plots


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
        ax.hist(data, bins=bins, label=[result.titles[k] for k in kinds], color=[COLORS[k] for k in kinds])
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
    for offset, kind in enumerate(kinds):
        xs = [i + (offset - (len(kinds) - 1) / 2) * width for i in range(len(groups))]
        label = result.titles[kind]
        ax.bar(xs, [values[offset] for _, values in groups], width, label=label, color=COLORS[kind])
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([label for label, _ in groups], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean per row")
    ax.set_title("Base vs fine-tuned vs GGUF")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def make_plots(run_dir: Path, result: EvalResult) -> dict[str, bytes]:
    log = trainer_log(run_dir)
    plots = {
        "loss": plot_loss(log),
        "learning_rate": plot_lr(log),
        "metrics_distribution": plot_distributions(result),
        "base_vs_tuned": plot_bars(result),
    }
    return {name: png for name, png in plots.items() if png}


# ---------------------------------------------------------------------------------------
# tables


def _f(value, digits: int = 3) -> str:
    return "—" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def metric_table(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    kinds = result.kinds
    header = ["set", "metric", *(result.titles[k] for k in kinds)]
    body = []
    for set_name in SETS:
        block = result.aggregate.get(set_name, {})
        if not block.get("base", {}).get("rows"):
            continue
        first = True
        for name in TABLE_METRICS:
            if all(block[k].get(name) is None for k in kinds):
                continue
            body.append(
                [
                    f"{set_name} ({block['base']['rows']})" if first else "",
                    name,
                    *(_f(block[k].get(name)) for k in kinds),
                ]
            )
            first = False
    return header, body


def language_table(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Per set and language, for the sets with more than one (eval.json from before: none)."""
    kinds = result.kinds
    header = ["set", "language", "metric", *(result.titles[k] for k in kinds)]
    body = []
    for set_name, langs in result.by_language.items():
        for lang, block in langs.items():
            first = True
            for name in TABLE_METRICS:
                if all(block[k].get(name) is None for k in kinds):
                    continue
                label = [set_name, f"{lang} ({block['base']['rows']})"] if first else ["", ""]
                body.append([*label, name, *(_f(block[k].get(name)) for k in kinds)])
                first = False
    return header, body


def quant_loss_table(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Per quant type: KL divergence from the f16 GGUF, beside llama.cpp's published Llama-3-8B figures."""
    header = [
        "quant",
        "imatrix",
        "size",
        "mean KLD",
        "99% KLD",
        "same top",
        "PPL(Q)/PPL(f16)",
        "scored tokens",
        "Llama-3-8B KLD",
        "Llama-3-8B same top",
    ]
    body = []
    for quant, q in (result.quant_loss).get("quants", {}).items():
        published = q.get("published") or {}
        same_top = published.get("compare_same_top_pct", None if q.get("imatrix") else published.get("same_top_pct"))
        body.append(
            [
                quant,
                "yes" if q.get("imatrix") else "no",
                f"{q['size_bytes'] / 2**20:.0f} MiB",
                f"{q['mean_kld']:.4f} ± {q['mean_kld_uncertainty']:.4f}",
                f"{q['p99_kld']:.4f}",
                f"{q['same_top_pct']:.1f}%",
                f"{q.get('ppl_q_over_f16') or q['ppl_ratio']:.3f}",
                str(q["tokens"]),
                _f(published.get("compare_kld"), 4),
                "—" if same_top is None else f"{same_top:.1f}%",
            ]
        )
    return header, body


def quant_loss_lines(result: EvalResult) -> list[str]:
    """What the KL-divergence table was measured on, or why it is missing (eval.json from before: nothing)."""
    section = result.quant_loss
    if not section:
        return []
    lines = []
    if section.get("reason"):
        fix = f" To measure it: {section['fix']}" if section.get("fix") else ""
        lines.append(f"KL divergence {section['status']}: {section['reason']}.{fix}")
    text = section.get("text")
    if section.get("quants") and text:
        kind = "training rows (seen in training)" if text.get("seen_in_training") else "validation rows"
        lines.append(
            f"Measured with llama-perplexity on {text['rows']} {kind} in the training format ({text['tokens']} tokens, "
            f"sha256 {text['sha256'][:12]}, from {text['source']}), context {section['ctx']}, against "
            f"{Path(section['base']['file']).name}; the full output: {section['log']}."
        )
        lines.append(
            "Published scale: " + section["published"]["source"] + "; there, f16 against its own stored "
            f"logits reads {section['published']['floor_kld']} (the method's floor)."
        )
        lines += section.get("notes", [])
    return lines


def skipped_lines(result: EvalResult) -> list[str]:
    """What the evaluation left out because the run no longer has it, and the command that brings it back."""
    return [f"Left out: {what}: {why['reason']}. To score it: {why['fix']}" for what, why in (result.skipped).items()]


def summary_lines(result: EvalResult) -> list[str]:
    lines = skipped_lines(result)
    q = result.gguf_quant
    val = result.sets.get("val", {})
    if val.get("rows"):
        lines.append(f"Validation rows: {val['rows']} of {val.get('of')} from {val.get('file')}: {val.get('note')}.")
    forgetting = result.forgetting
    if forgetting.get("rows"):
        merged = f"the merged fine-tune forgot {forgetting['merged']['forgotten']}, " if "merged" in forgetting else ""
        lines.append(
            f"Forgetting: the base model knew {forgetting['known_by_base']} of {forgetting['rows']} general "
            f"prompts; {merged}the {q} GGUF forgot {forgetting['gguf']['forgotten']}."
        )
    quant = result.quantization
    ppl = quant["perplexity"]
    if ppl.get("f16", {}).get("perplexity") is not None:
        lines.append(
            f"Perplexity of the reference answers ({quant['perplexity_set']} set, {ppl['f16']['tokens']} "
            f"tokens): f16 GGUF {ppl['f16']['perplexity']:.3f}, {q} {ppl[q]['perplexity']:.3f} "
            f"(ratio {quant['perplexity_ratio']:.3f})."
        )
    if quant.get("identical_greedy"):
        lines += identical_lines(f"merged HF vs {q}", quant["identical_greedy"])
    return lines + adapter_lines(result)


def identical_lines(pair: str, same: dict) -> list[str]:
    """How many greedy answers two models gave token for token, per set that has rows."""
    return [
        f"Identical greedy answers, {pair}, {set_name}: "
        f"{same[set_name]['identical']}/{same[set_name]['rows']} ({same[set_name]['share']:.0%})."
        for set_name in ("control", "val")
        if same[set_name]["rows"]
    ]


def adapter_lines(result: EvalResult) -> list[str]:
    """The base GGUF + LoRA adapter GGUF beside the merged Q4_K_M (eval.json without an adapter: nothing)."""
    section = result.adapter
    if not section:
        return []

    def mib(size: int) -> str:
        return f"{size / 2**20:.1f} MiB"

    title, q = result.titles[ADAPTER_MODEL], result.gguf_quant
    lines = [
        f"{title}: the adapter is {mib(section['adapter_bytes'])}, applied to "
        f"{Path(section['base_file']).name} ({mib(section['base_bytes'])}); the merged {q} is "
        f"{mib(section['merged_gguf_bytes'])}."
    ]
    ppl = result.quantization["perplexity"].get(ADAPTER_MODEL, {}).get("perplexity")
    if ppl is not None and section.get("perplexity_ratio_vs_gguf"):
        lines.append(
            f"Perplexity of the reference answers with the adapter: {ppl:.3f} "
            f"(x{section['perplexity_ratio_vs_gguf']:.3f} the merged {q}'s)."
        )
    lines += identical_lines(f"{title} vs merged {q}", section["identical_greedy_vs_gguf"])
    forgot = result.forgetting.get(ADAPTER_MODEL)
    if result.forgetting.get("rows") and forgot:
        lines.append(f"Forgetting: the {title} forgot {forgot['forgotten']} of the general prompts the base knew.")
    return lines


def _md_table(header: list[str], body: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def answer_rows(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Each prompt of the control and general sets with the three answers side by side."""
    by_key: dict[tuple[str, str], dict[str, dict]] = {}
    for row in result.rows:
        if row.get("set") in ("control", "general") and "answer" in row:
            by_key.setdefault((row["set"], row["id"]), {})[row["model"]] = row
    kinds = result.kinds
    header = ["set", "prompt", "reference", *(result.titles[k] for k in kinds), "ROUGE-L (GGUF)"]
    body = []
    for (set_name, _), models in by_key.items():
        first = next(iter(models.values()))
        body.append(
            [
                set_name,
                first["prompt"],
                first["reference"],
                *(models.get(k, {}).get("answer", "") for k in kinds),
                _f(models.get("gguf", {}).get("metrics", {}).get("rouge_l")),
            ]
        )
    return header, body


# ---------------------------------------------------------------------------------------
# writing


def write_report(run_dir: Path) -> tuple[Path, Path]:
    result = EvalResult.load(run_dir)
    plots = make_plots(run_dir, result)
    images_dir = run_dir / "report"
    images_dir.mkdir(exist_ok=True)
    for name, png in plots.items():
        (images_dir / f"{name}.png").write_bytes(png)
    header, body = metric_table(result)
    answers_header, answers_body = answer_rows(result)
    title = f"ftw evaluation: {result.run}"
    intro = (
        f"Recipe `{result.recipe}`, profile `{result.profile}`, evaluated {result.evaluated_at}; "
        f"greedy decoding in the training format ({result.settings['format']}), at most "
        f"{result.settings['max_new_tokens']} new tokens. Models: "
        + ", ".join(f"{result.titles[k]} `{result.models[k]}`" for k in result.kinds)
        + ". Every number is in eval.json."
    )

    md = [f"# {title}", "", intro, "", "## Metrics (mean per row)", "", _md_table(header, body), ""]
    md += [f"- {line}" for line in summary_lines(result)] + [""]
    lang_header, lang_body = language_table(result)
    if lang_body:
        md += ["## Per language (mean per row)", "", _md_table(lang_header, lang_body), ""]
    kld_header, kld_body = quant_loss_table(result)
    kld_lines = quant_loss_lines(result)
    if kld_body or kld_lines:
        md += [f"## {QUANT_LOSS_TITLE}", ""]
        md += [_md_table(kld_header, kld_body), ""] if kld_body else []
        md += [f"- {line}" for line in kld_lines] + [""]
    lost = result.forgetting.get("gguf", {}).get("forgotten_prompts", [])
    if lost:
        md += [
            f"## Forgotten by the fine-tune ({result.titles['gguf']})",
            "",
            _md_table(
                ["prompt", "expected", "base", "GGUF"],
                [[x["prompt"], x["expect"], x["base_answer"], x["answer"]] for x in lost],
            ),
            "",
        ]
    md += ["## Plots", ""] + [f"![{name}](report/{name}.png)" for name in plots] + [""]
    md += ["## Answers", "", _md_table(answers_header, answers_body), ""]
    md_path = run_dir / "report.md"
    write_text_atomic(md_path, "\n".join(md))

    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        f"<figcaption>{html.escape(name.replace('_', ' '))}</figcaption></figure>"
        for name, png in plots.items()
    )
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(result))
    forgotten = ""
    if lost:
        forgotten = f"<h2>Forgotten by the fine-tune ({html.escape(result.titles['gguf'])})</h2>" + _html_table(
            ["prompt", "expected", "base", "GGUF"],
            [[x["prompt"], x["expect"], x["base_answer"], x["answer"]] for x in lost],
        )
    per_language = "<h2>Per language (mean per row)</h2>" + _html_table(lang_header, lang_body) if lang_body else ""
    quant_loss = ""
    if kld_body or kld_lines:
        quant_loss = f"<h2>{html.escape(QUANT_LOSS_TITLE)}</h2>"
        quant_loss += _html_table(kld_header, kld_body) if kld_body else ""
        quant_loss += "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in kld_lines) + "</ul>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(intro)}</p>
<h2>Metrics (mean per row)</h2>
{_html_table(header, body)}
<ul>{summary}</ul>
{per_language}
{quant_loss}
{forgotten}
<h2>Plots</h2>
{images}
<h2>Answers</h2>
{_html_table(answers_header, answers_body)}
</body></html>
"""
    html_path = run_dir / "report.html"
    write_text_atomic(html_path, page)
    return md_path, html_path


def comparison(
    results: list[EvalResult], logs: list[list[dict]], names: list[str] | None = None
) -> tuple[list[str], list[list[str]]]:

    def last_loss(log):
        losses = [e["loss"] for e in log if e.get("loss") is not None]
        return losses[-1] if losses else None

    def last_eval_loss(log):
        losses = [e["eval_loss"] for e in log if e.get("eval_loss") is not None]
        return losses[-1] if losses else None

    lines: list[tuple[str, Any]] = [
        ("recipe", lambda r, log: r.recipe),
        ("profile", lambda r, log: r.profile),
        ("final training loss", lambda r, log: last_loss(log)),
        ("final eval loss", lambda r, log: last_eval_loss(log)),
    ]
    for set_name in ("control", "val"):
        for name in ("contains", "token_f1", "rouge_l", "key_info_recall"):
            for kind in ("base", "gguf"):
                lines.append(
                    (
                        f"{set_name} {name} ({'base' if kind == 'base' else 'quantized GGUF'})",
                        lambda r, log, s=set_name, n=name, k=kind: r.metric(s, k, n),
                    )
                )
    lines += [
        ("general prompts known by base", lambda r, log: r.forgetting.get("known_by_base")),
        ("quantized GGUF", lambda r, log: r.gguf_quant),
        ("forgotten by the GGUF", lambda r, log: r.forgetting.get("gguf", {}).get("forgotten")),
        ("perplexity f16", lambda r, log: r.quantization["perplexity"].get("f16", {}).get("perplexity")),
        ("perplexity GGUF", lambda r, log: r.quantization["perplexity"].get(r.gguf_quant, {}).get("perplexity")),
        (
            "identical greedy, control",
            lambda r, log: ((r.quantization["identical_greedy"] or {}).get("control") or {}).get("share"),
        ),
        ("mean KLD of the GGUF (llama.cpp)", lambda r, log: r.kld(r.gguf_quant, "mean_kld")),
        ("same top of the GGUF, %", lambda r, log: r.kld(r.gguf_quant, "same_top_pct")),
    ]
    header = ["", *(names or [r.run for r in results])]
    body = []
    for label, get in lines:
        values = [get(r, log) for r, log in zip(results, logs)]
        if all(v is None for v in values) and label.startswith(("control", "val", "final eval")):
            continue
        body.append([label, *(_f(v) for v in values)])
    return header, body


def compare_runs(run_dirs: list[Path], out: Path | None = None) -> tuple[list[str], list[list[str]]]:
    results = [EvalResult.load(d) for d in run_dirs]
    header, body = comparison(results, [trainer_log(d) for d in run_dirs], [d.name for d in run_dirs])
    table = Table(title="ftw: runs compared (eval.json of each)")
    for column in header:
        table.add_column(column, justify="left" if column == "" else "right")
    for row in body:
        table.add_row(*row)
    console.print(table)
    if out:
        write_text_atomic(out, "# Runs compared\n\n" + _md_table(header, body) + "\n")
        console.print(f"[green]✓[/green] {out}")
    return header, body


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_tables(result: EvalResult) -> None:
    table = Table(title=f"{result.run}: evaluation (greedy, training format; means per row)", show_lines=False)
    table.add_column("set")
    table.add_column("metric")
    kinds = result.kinds
    titles = result.titles
    for kind in kinds:
        table.add_column(titles[kind], justify="right")
    for set_name in SETS:
        block = result.aggregate[set_name]
        if not block["base"]["rows"]:
            continue
        label = f"{set_name} ({block['base']['rows']})"
        for name in TABLE_METRICS:
            if all(block[k][name] is None for k in kinds):
                continue
            table.add_row(label, name, *(_fmt(block[k][name]) for k in kinds))
            label = ""
        table.add_section()
    console.print(table)
    lang_header, lang_body = language_table(result)
    if lang_body:
        per_language = Table(title="per language (means per row)")
        for column in lang_header:
            per_language.add_column(column, justify="right" if column in titles.values() else "left")
        for row in lang_body:
            per_language.add_row(*row)
        console.print(per_language)
    if result.sets["val"].get("seen_in_training"):
        console.print(f"  val: {result.sets['val']['note']}")
    forgetting = result.forgetting
    q = result.gguf_quant
    if forgetting["rows"]:
        gguf = forgetting["gguf"]
        merged = f" (merged HF: {forgetting['merged']['forgotten']})" if "merged" in forgetting else ""
        console.print(
            f"Forgetting: the base model knew {forgetting['known_by_base']} of {forgetting['rows']} "
            f"general prompts; the {q} GGUF forgot {gguf['forgotten']} of them{merged}."
        )
        for lost in gguf["forgotten_prompts"]:
            console.print(
                f"  [red]forgot[/red] {escape(lost['prompt'])}  base: {escape(lost['base_answer'])!s}  "
                f"→ GGUF: {escape(lost['answer'])}"
            )
    quant = result.quantization
    ppl = quant["perplexity"]
    same = (quant.get("identical_greedy") or {}).get("control") or {"rows": 0}
    parts = []
    if ppl.get("f16", {}).get("perplexity") is not None:
        parts.append(
            f"perplexity on {ppl['f16']['rows']} reference answers: f16 {ppl['f16']['perplexity']:.3f}, "
            f"{q} {ppl[q]['perplexity']:.3f} (x{quant['perplexity_ratio']:.3f})"
        )
    if same["rows"]:
        parts.append(f"identical greedy answers merged HF vs {q}: {same['identical']}/{same['rows']} control prompts")
    if parts:
        console.print("Quantization: " + "; ".join(parts) + ".")
    for line in skipped_lines(result):
        console.print(f"[yellow]{escape(line)}[/yellow]", soft_wrap=True)
    for line in adapter_lines(result):
        console.print(escape(line), soft_wrap=True)
    print_quant_loss(result)


def print_quant_loss(result: EvalResult) -> None:
    header, body = quant_loss_table(result)
    section = result.quant_loss
    if body:
        table = Table(title=QUANT_LOSS_TITLE)
        # the terminal gets the columns a person compares; report.md and report.html have them all
        names = TERMINAL_QUANT_COLUMNS[:1] + (("imatrix",) if any(row[1] == "yes" for row in body) else ())
        shown = [header.index(name) for name in names + TERMINAL_QUANT_COLUMNS[1:]]
        for index in shown:
            table.add_column(header[index], justify="left" if header[index] in ("quant", "imatrix") else "right")
        for row in body:
            table.add_row(*(row[index] for index in shown))
        console.print(table)
        text = section.get("text") or {}
        console.print(
            f"  on {text.get('tokens')} tokens of {'training' if text.get('seen_in_training') else 'validation'} rows "
            f"in the training format (chat markers read as text by llama-perplexity), context {section.get('ctx')}; "
            "published: Llama-3-8B on Wikitext-2 (llama.cpp tools/perplexity/README.md)."
        )
    if section.get("reason"):
        fix = f" To measure it: {section['fix']}" if section.get("fix") else ""
        console.print(f"[yellow]KL divergence {section['status']}[/yellow]: {escape(section['reason'])}.{fix}")
