"""The tables of an evaluation, built once from eval.json (an EvalResult) and rendered three ways:
report.md and report.html (wrapper/eval/render.py) and the terminal (wrapper/commands/eval_tables.py).

A table is a title, a header, rows of text and the lines said under it; everything a renderer
shows is decided here, so the three agree. The comparison of several runs is one more table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrapper.core.eval_result import SETS, EvalResult, Score, gguf_kind
from wrapper.eval.sets import ADAPTER_MODEL, TABLE_METRICS

KNOWLEDGE_TITLE = "Does it know the documents? (share right, 95% interval)"
KNOWLEDGE_LABELS = {
    "seen": "SEEN: trained questions",
    "probes": "PROBES: held-out phrasings",
    "unseen": "UNSEEN: right",
}
KNOWLEDGE_GROUPS_TITLE = "Does it know the documents? Per language and per document (share right, 95% interval)"
JUDGED = "right by the judge"
MC_LABEL = "PROBES: multiple choice (1 in 4)"
OPEN_BOOK_LABEL = "PROBES: open book (the chunk in the prompt)"
RECOVERY_LABEL = "PROBES: recovery of the open book"
QUANT_LOSS_TITLE = "Quantization loss (KL divergence from the f16 GGUF, llama.cpp's way)"
# the terminal gets the columns a person compares; report.md and report.html have them all
BRIEF_QUANT_COLUMNS = ("quant", "mean KLD", "99% KLD", "same top", "PPL(Q)/PPL(f16)", "Llama-3-8B KLD")


@dataclass(frozen=True)
class Table:
    """One table and what is said under it."""

    title: str
    header: list[str]
    rows: list[list[str]]
    warnings: list[str] = field(default_factory=list)  # what is missing here, with the command that brings it back
    notes: list[str] = field(default_factory=list)  # what the numbers are (every renderer)
    details: list[str] = field(default_factory=list)  # longer explanations (the files, not the terminal)
    labels: int = 1  # leading columns that name a row; the others hold values
    grouped: bool = False  # a row whose first cell is empty continues the group above it
    brief: tuple[str, ...] = ()  # the columns the terminal shows (all when empty)

    @property
    def empty(self) -> bool:
        return not (self.rows or self.warnings or self.notes or self.details)


@dataclass(frozen=True)
class Report:
    """report.md and report.html: the tables the terminal prints too, then the answers (files only)."""

    title: str
    intro: str
    tables: list[Table]
    answers: Table


def fmt(value: Any, digits: int = 3) -> str:
    return "—" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def report_of(result: EvalResult) -> Report:
    models = ", ".join(f"{result.titles[k]} `{result.models[k]}`" for k in result.kinds)
    intro = (
        f"Recipe `{result.recipe}`, profile `{result.profile}`, evaluated {result.evaluated_at}; "
        f"greedy decoding in the training format ({result.settings['format']}), at most "
        f"{result.settings['max_new_tokens']} new tokens. Models: {models}. Every number is in eval.json."
    )
    tables = [
        knowledge_table(result),
        knowledge_groups_table(result),
        metric_table(result),
        language_table(result),
        quant_loss_table(result),
        forgotten_table(result),
    ]
    return Report(f"ftw evaluation: {result.run}", intro, [t for t in tables if not t.empty], answers_table(result))


# ---- the metrics --------------------------------------------------------------------------


def metric_table(result: EvalResult) -> Table:
    kinds = result.kinds
    rows = []
    for set_name in SETS:
        block = result.aggregate.get(set_name, {})
        if not block.get("base", {}).get("rows"):
            continue
        label = f"{set_name} ({block['base']['rows']})"
        for name in TABLE_METRICS:
            if all(block[k].get(name) is None for k in kinds):
                continue
            rows.append([label, name, *(fmt(block[k].get(name)) for k in kinds)])
            label = ""
    return Table(
        "Metrics (mean per row)",
        ["set", "metric", *(result.titles[k] for k in kinds)],
        rows,
        warnings=skipped_lines(result),
        notes=summary_lines(result),
        labels=2,
        grouped=True,
    )


def language_table(result: EvalResult) -> Table:
    """Per set and language, for the sets with more than one (eval.json from before: none)."""
    kinds = result.kinds
    rows = []
    for set_name, langs in result.by_language.items():
        for lang, block in langs.items():
            label = [set_name, f"{lang} ({block['base']['rows']})"]
            for name in TABLE_METRICS:
                if all(block[k].get(name) is None for k in kinds):
                    continue
                rows.append([*label, name, *(fmt(block[k].get(name)) for k in kinds)])
                label = ["", ""]
    header = ["set", "language", "metric", *(result.titles[k] for k in kinds)]
    return Table("Per language (mean per row)", header, rows, labels=3, grouped=True)


# ---- does it know the documents ------------------------------------------------------------


def percent(share: float | None) -> str:
    return "—" if share is None else f"{share:.0%}"


def score_cell(score: Score | None) -> str:
    """8/10 80% (49–94%): right of n, the share and its Wilson 95% interval."""
    if score is None or not score.n:
        return "—"
    return f"{score.correct}/{score.n} {percent(score.accuracy)} ({percent(score.low)}–{percent(score.high)})"


def share_cell(count: int | None, n: int) -> str:
    return "—" if count is None or not n else f"{count}/{n} {percent(count / n)}"


def knowledge_table(result: EvalResult) -> Table:
    """SEEN, PROBES and UNSEEN per model (eval.json without facts: no table)."""
    section = result.knowledge
    if section is None:
        return Table(KNOWLEDGE_TITLE, [], [])
    kinds = result.kinds
    rows = []
    for set_name, label in KNOWLEDGE_LABELS.items():
        scores = section.key_match.get(set_name)
        if not scores:
            continue
        rows.append([label, *(score_cell(scores.get(kind)) for kind in kinds)])
        if set_name == "probes" and section.multiple_choice:
            rows.append([MC_LABEL, *(score_cell(section.multiple_choice.get(kind)) for kind in kinds)])
        if set_name == "probes" and section.open_book is not None:
            rows.append([OPEN_BOOK_LABEL, *(score_cell(section.open_book) if k == "base" else "—" for k in kinds)])
            rows.append([RECOVERY_LABEL, *("—" if k == "base" else fmt(section.recovery.get(k), 2) for k in kinds)])
        if set_name in section.judged:
            judged = section.judged[set_name]
            rows.append([f"{set_name.upper()}: {JUDGED}", *(score_cell(judged.get(kind)) for kind in kinds)])
        if set_name == "unseen":
            for name, what in (("incorrect", "UNSEEN: confident-wrong"), ("not_attempted", "UNSEEN: abstained")):
                rows.append(
                    [what, *(share_cell(getattr(scores[k], name), scores[k].n) if k in scores else "—" for k in kinds)]
                )
    notes = [line for line in [knowledge_headline(result)] if line]
    if section.multiple_choice:
        notes.append(
            "Multiple choice: of the probe's reference and the answers to three other facts of its language, the "
            "one the model finds likeliest (least loss per token); no generation, so it holds on tiny models. "
            "Chance is 25%."
        )
    if section.open_book is not None:
        notes.append(
            f"Open book: the base model answers {section.open_book.n} probes with their chunk's text in the prompt; "
            "recovery = (tuned - base) / (open book - base) on those probes: 1.0 is as good as reading the chunk."
        )
    if section.judged:
        notes.append(
            f"The judge ({section.judge}) graded each free answer shown the reference and, when known, the chunk."
        )
    unseen = section.key_match.get("unseen")
    if unseen:
        notes.append(
            "UNSEEN asks about chunks never trained: a confident wrong answer there is what the fine-tune invents; "
            "an abstention (I don't know, не знаю, білмеймін) is not wrong."
        )
    sources = ", ".join(
        f"{name} {block['rows']} of {block['of']} ({Path(block['file']).name})"
        for name, block in section.sets.items()
        if block.get("of")
    )
    details = [f"Questions: {sources}; seed {next(iter(section.sets.values()), {}).get('seed')}.", *section.notes]
    return Table(KNOWLEDGE_TITLE, ["set", *(result.titles[k] for k in kinds)], rows, notes=notes, details=details)


def knowledge_groups_table(result: EvalResult) -> Table:
    """The knowledge sets per language and per document, where a set holds more than one."""
    section = result.knowledge
    kinds = result.kinds
    rows = []
    if section is not None:
        for by, groups in (("language", section.by_language), ("document", section.by_document)):
            for set_name, block in groups.items():
                label = [f"{set_name.upper()} by {by}"]
                for group, scores in block.items():
                    rows.append([*label, group, *(score_cell(scores.get(kind)) for kind in kinds)])
                    label = [""]
    header = ["set", "language or document", *(result.titles[k] for k in kinds)]
    return Table(KNOWLEDGE_GROUPS_TITLE, header, rows, labels=2, grouped=True)


def knowledge_headline(result: EvalResult) -> str | None:
    """held-out phrasings: base 10% → Q4_K_M GGUF 70% (the main quantized GGUF; else the last model)."""
    probes = result.knowledge.key_match.get("probes") if result.knowledge else None
    if not probes or "base" not in probes:
        return None
    main = gguf_kind(result.main_quant)
    tuned = main if main in probes else next((k for k in reversed(result.kinds) if k in probes), None)
    if tuned is None or tuned == "base":
        return None
    return (
        f"Held-out phrasings: base {percent(probes['base'].accuracy)} → {result.titles[tuned]} "
        f"{percent(probes[tuned].accuracy)} (n={probes[tuned].n})."
    )


def skipped_lines(result: EvalResult) -> list[str]:
    """What the evaluation left out because the run no longer has it, and the command that brings it back."""
    return [f"Left out: {what}: {why['reason']}. To score it: {why['fix']}" for what, why in result.skipped.items()]


def summary_lines(result: EvalResult) -> list[str]:
    lines = []
    val = result.sets.get("val", {})
    if val.get("rows"):
        lines.append(f"Validation rows: {val['rows']} of {val.get('of')} from {val.get('file')}: {val.get('note')}.")
    forgetting = result.forgetting
    if forgetting.get("rows"):
        names = {"merged": "merged fine-tune", **{kind: result.titles[kind] for kind in result.gguf_kinds}}
        forgot = [
            f"the {name} forgot {forgetting[kind]['forgotten']}" for kind, name in names.items() if kind in forgetting
        ]
        lines.append(
            f"Forgetting: the base model knew {forgetting['known_by_base']} of {forgetting['rows']} general "
            f"prompts; {', '.join(forgot)}."
        )
    quant = result.quantization
    ppl = quant["perplexity"]
    if ppl.get("f16", {}).get("perplexity") is not None:
        ratios = quant.get("perplexity_ratio") or {}
        each = [
            f"{q} {ppl[q]['perplexity']:.3f} (ratio {fmt(ratios.get(q))})"
            for q in result.gguf_quants
            if ppl.get(q, {}).get("perplexity") is not None
        ]
        lines.append(
            f"Perplexity of the reference answers ({quant['perplexity_set']} set, {ppl['f16']['tokens']} "
            f"tokens): f16 GGUF {ppl['f16']['perplexity']:.3f}, {', '.join(each)}."
        )
    for q, same in (quant.get("identical_greedy") or {}).items():
        lines += identical_lines(f"merged HF vs {q}", same)
    return lines + adapter_lines(result)


def identical_lines(pair: str, same: dict) -> list[str]:
    """How many greedy answers two models gave token for token, per set that has rows."""
    return [
        f"Identical greedy answers, {pair}, {set_name}: "
        f"{same[set_name]['identical']}/{same[set_name]['rows']} ({same[set_name]['share']:.0%})."
        for set_name in ("control", "val")
        if same[set_name]["rows"]
    ]


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def adapter_lines(result: EvalResult) -> list[str]:
    """The base GGUF + LoRA adapter GGUF beside the merged quantized GGUF (eval.json without an adapter: nothing)."""
    section = result.adapter
    if not section:
        return []
    title, q = result.titles[ADAPTER_MODEL], section.get("vs_quant") or result.main_quant
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


# ---- the quantization loss ---------------------------------------------------------------


def quant_loss_table(result: EvalResult) -> Table:
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
    quants = result.quant_loss.get("quants") or {}
    rows = [quant_loss_row(quant, q) for quant, q in quants.items()]
    imatrix = ("imatrix",) if any(q.get("imatrix") for q in quants.values()) else ()
    section = result.quant_loss
    warnings = []
    if section.get("reason"):
        fix = f" To measure it: {section['fix']}" if section.get("fix") else ""
        warnings.append(f"KL divergence {section['status']}: {section['reason']}.{fix}")
    notes, details = [], []
    text = section.get("text")
    if rows and text:
        kind = "training rows (seen in training)" if text.get("seen_in_training") else "validation rows"
        notes.append(
            f"Measured with llama-perplexity on {text['rows']} {kind} in the training format ({text['tokens']} tokens, "
            f"sha256 {text['sha256'][:12]}, from {text['source']}), context {section['ctx']}, against "
            f"{Path(section['base']['file']).name}; the full output: {section['log']}."
        )
        notes.append(
            "Published scale: " + section["published"]["source"] + "; there, f16 against its own stored "
            f"logits reads {section['published']['floor_kld']} (the method's floor)."
        )
        details = list(section.get("notes", []))
    brief = BRIEF_QUANT_COLUMNS[:1] + imatrix + BRIEF_QUANT_COLUMNS[1:]
    return Table(QUANT_LOSS_TITLE, header, rows, warnings, notes, details, labels=2, brief=brief)


def quant_loss_row(quant: str, q: dict[str, Any]) -> list[str]:
    published = q.get("published") or {}
    same_top = published.get("compare_same_top_pct", None if q.get("imatrix") else published.get("same_top_pct"))
    return [
        quant,
        "yes" if q.get("imatrix") else "no",
        f"{q['size_bytes'] / 2**20:.0f} MiB",
        f"{q['mean_kld']:.4f} ± {q['mean_kld_uncertainty']:.4f}",
        f"{q['p99_kld']:.4f}",
        f"{q['same_top_pct']:.1f}%",
        f"{q.get('ppl_q_over_f16') or q['ppl_ratio']:.3f}",
        str(q["tokens"]),
        fmt(published.get("compare_kld"), 4),
        "—" if same_top is None else f"{same_top:.1f}%",
    ]


# ---- the answers ---------------------------------------------------------------------------


def forgotten_table(result: EvalResult) -> Table:
    """The general prompts the base answered and a quantized fine-tune no longer does, with each one's answer."""
    kinds = result.gguf_kinds
    forgotten = {
        kind: {x["id"]: x for x in result.forgetting.get(kind, {}).get("forgotten_prompts", [])} for kind in kinds
    }
    lost: dict[str, dict[str, Any]] = {}
    for by_id in forgotten.values():
        for key, prompt in by_id.items():
            lost.setdefault(key, prompt)
    answers = {(row["id"], row["model"]): row.get("answer", "") for row in result.rows if row.get("set") == "general"}

    def answer(key: str, kind: str) -> str:
        return forgotten[kind][key]["answer"] if key in forgotten[kind] else answers.get((key, kind), "")

    rows = [
        [x["prompt"], x["expect"], x["base_answer"], *(answer(key, kind) for kind in kinds)] for key, x in lost.items()
    ]
    titles = [result.titles[kind] for kind in kinds]
    header = ["prompt", "expected", "base", *(titles if len(kinds) > 1 else ["GGUF"])]
    return Table(f"Forgotten by the fine-tune ({', '.join(titles)})", header, rows, labels=len(header))


def answers_table(result: EvalResult) -> Table:
    """Each prompt of the control and general sets with the models' answers side by side."""
    by_key: dict[tuple[str, str], dict[str, dict]] = {}
    for row in result.rows:
        if row.get("set") in ("control", "general") and "answer" in row:
            by_key.setdefault((row["set"], row["id"]), {})[row["model"]] = row
    kinds = result.kinds
    rouge = ["ROUGE-L (GGUF)"] if len(result.gguf_quants) == 1 else [f"ROUGE-L ({q})" for q in result.gguf_quants]
    header = ["set", "prompt", "reference", *(result.titles[k] for k in kinds), *rouge]
    rows = []
    for (set_name, _), models in by_key.items():
        first = next(iter(models.values()))
        answers = [models.get(k, {}).get("answer", "") for k in kinds]
        scores = [fmt(models.get(k, {}).get("metrics", {}).get("rouge_l")) for k in result.gguf_kinds]
        rows.append([set_name, first["prompt"], first["reference"], *answers, *scores])
    return Table("Answers", header, rows, labels=len(header))


# ---- several runs --------------------------------------------------------------------------


def main_kind(result: EvalResult) -> str:
    return gguf_kind(result.main_quant)


def identical_share(result: EvalResult, set_name: str) -> float | None:
    same = (result.quantization.get("identical_greedy") or {}).get(result.main_quant) or {}
    return (same.get(set_name) or {}).get("share")


def last(log: list[dict], name: str) -> float | None:
    values = [e[name] for e in log if e.get(name) is not None]
    return values[-1] if values else None


def comparison_table(results: list[EvalResult], logs: list[list[dict]], names: list[str]) -> Table:
    """Runs side by side: one column each, from their eval.json and training logs. A run's quantized GGUF
    is its main one (EvalResult.main_quant: the default quantization when it was scored)."""
    lines: list[tuple[str, Any]] = [
        ("recipe", lambda r, log: r.recipe),
        ("profile", lambda r, log: r.profile),
        ("final training loss", lambda r, log: last(log, "loss")),
        ("final eval loss", lambda r, log: last(log, "eval_loss")),
    ]
    for set_name in ("control", "val"):
        for name in ("contains", "token_f1", "rouge_l", "key_info_recall"):
            for kind in ("base", "gguf"):
                lines.append(
                    (
                        f"{set_name} {name} ({'base' if kind == 'base' else 'quantized GGUF'})",
                        lambda r, log, s=set_name, n=name, k=kind: r.metric(s, main_kind(r) if k == "gguf" else k, n),
                    )
                )
    lines += [
        ("general prompts known by base", lambda r, log: r.forgetting.get("known_by_base")),
        ("quantized GGUF", lambda r, log: r.main_quant),
        ("forgotten by the GGUF", lambda r, log: r.forgetting.get(main_kind(r), {}).get("forgotten")),
        ("perplexity f16", lambda r, log: r.quantization["perplexity"].get("f16", {}).get("perplexity")),
        ("perplexity GGUF", lambda r, log: r.quantization["perplexity"].get(r.main_quant, {}).get("perplexity")),
        ("identical greedy, control", lambda r, log: identical_share(r, "control")),
        ("mean KLD of the GGUF (llama.cpp)", lambda r, log: r.kld(r.main_quant, "mean_kld")),
        ("same top of the GGUF, %", lambda r, log: r.kld(r.main_quant, "same_top_pct")),
    ]
    rows = []
    for label, get in lines:
        values = [get(r, log) for r, log in zip(results, logs)]
        if all(v is None for v in values) and label.startswith(("control", "val", "final eval")):
            continue
        rows.append([label, *(fmt(v) for v in values)])
    return Table("ftw: runs compared (eval.json of each)", ["", *names], rows)
