"""`ftw eval`: did the fine-tune help, did it forget, did it survive quantization?

The models answer, greedily and in the training format (LLaMA-Factory's template):
the base model, the merged fine-tune (both transformers, float32 on the CPU) and each
quantized GGUF of the run in llama.cpp (`--quant` chooses), the files users actually run; and,
when `ftw adapter` made the pair, the base GGUF with the LoRA adapter GGUF applied in llama.cpp
("lora": what the small download costs in quality beside the merged Q4_K_M). They answer three sets:

  control  the recipe's control prompts with reference answers (`eval.control`, JSONL)
  val      the run's validation split (runs/RUN/data/val.jsonl from `ftw data prepare`),
           or a seeded sample of the recipe's dataset rows (then seen in training: it
           measures memorisation, not generalisation; eval.json and the report say so)
  general  general-knowledge prompts (`eval.general`) with the fact each answer must
           contain: the forgetting check counts those the base knew and the tune lost

Every answer is scored (wrapper/eval/metrics.py). Quantization fidelity: perplexity of the f16
and each quantized GGUF on the reference answers of the val set (llama.cpp logits), the
share of control prompts whose greedy answer is the same tokens from merged HF and each quantized GGUF,
and quantization loss measured llama.cpp's way, the KL divergence of every quantized GGUF
from the f16 one on the validation rows in the training format (wrapper/eval/quant_loss.py;
llama-perplexity is built on first use, and eval completes without it, saying why).

Each scored row is appended to runs/RUN/eval/rows.jsonl and flushed at once; a re-run
keeps the rows already there (keyed by model, set, row id and a hash of what was asked),
so an interrupted evaluation continues where it stopped. Results: runs/RUN/eval.json,
then report.md and report.html (wrapper/eval/report.py).
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wrapper.core import artifacts, manifest
from wrapper.core.cpu import cpu_jobs
from wrapper.core.errors import FtwError
from wrapper.core.eval_result import KNOWLEDGE_SETS, SETS, EvalResult, gguf_kind, main_quant, model_title, quant_of
from wrapper.core.gguf_io import DEFAULT_QUANT
from wrapper.core.journal import Journal
from wrapper.core.ui import spinner, stage_progress, step
from wrapper.eval import knowledge as facts
from wrapper.eval import metrics, quant_loss
from wrapper.eval.knowledge import KnowledgeSets, answer_budget
from wrapper.eval.sets import ADAPTER_MODEL, EvalSets, Item, load_sets, plan_eval, row_model
from wrapper.prompts.training_format import training_format
from wrapper.runtime.models import GgufModel, HfModel, load_llama
from wrapper.synth.teachers import open_teacher

EVAL_DIR = "eval"
ROWS = "rows.jsonl"


# ---------------------------------------------------------------------------------------
# answering


def adapter_pair(run_dir: Path) -> tuple[Path, Path] | None:
    """(base GGUF, LoRA adapter GGUF) when `ftw adapter` made the pair and the base is here; else None."""
    recorded = manifest.load(run_dir)["artifacts"]
    base, lora = recorded.get(artifacts.GGUF_LORA_BASE), recorded.get(artifacts.GGUF_LORA)
    if base and lora and Path(base).is_file() and Path(lora).is_file():
        return Path(base), Path(lora)
    return None


def merged_weights_kept(run_dir: Path) -> bool:
    """`ftw gguf` removes the merged weights after quantizing unless told to keep them (the folder stays)."""
    return "merged" in manifest.load(run_dir)["artifacts"] and "merged" not in manifest.removed_intermediates(run_dir)


def model_kinds(run_dir: Path, ggufs: dict[str, Path]) -> tuple[str, ...]:
    """The models that answer: base, merged (while its weights are kept), each quantized GGUF scored, and the
    adapter pair when the run has one."""
    kinds = ["base", *(["merged"] if merged_weights_kept(run_dir) else []), *map(gguf_kind, ggufs)]
    return (*kinds, ADAPTER_MODEL) if adapter_pair(run_dir) else tuple(kinds)


def choose_quants(run_dir: Path, quants: tuple[str, ...] = ()) -> dict[str, Path]:
    """The quantized GGUFs scored, by quantization: those asked for, else every one the run has (the default
    quantization first)."""
    found = manifest.quantized_ggufs(run_dir)
    run = run_dir.name
    if not found:
        raise FtwError(f"run {run} has no quantized GGUF to evaluate yet. Make one: ftw gguf --run {run}")
    if not quants:
        return dict(sorted(found.items(), key=lambda item: item[0] != DEFAULT_QUANT))
    chosen = {}
    for asked in quants:
        quant = next((q for q in found if q.lower() == asked.lower()), asked.upper())
        if quant not in found:
            raise FtwError(
                f"run {run} has no {quant} GGUF (it has {', '.join(found)}). Make it: ftw export --run {run} && "
                f"ftw gguf --run {run} --quant {quant}, or evaluate one it has: ftw eval --run {run} --quant "
                f"{next(iter(found))}"
            )
        chosen[quant] = found[quant]
    return chosen


def skipped_models(run_dir: Path, kinds: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """What this evaluation leaves out of what a full one scores, why, and the command that brings it back."""
    skipped = {}
    run = run_dir.name
    if "merged" not in kinds:
        skipped["merged"] = {
            "reason": "the merged weights were removed by `ftw gguf` after quantizing, to free disk",
            "fix": f"ftw export --run {run} --force && ftw gguf --run {run} --keep-intermediates",
        }
    if not manifest.load(run_dir)["artifacts"].get(artifacts.gguf("f16")):
        skipped["f16"] = {
            "reason": "the f16 GGUF was removed after quantizing (its perplexity and the KL divergence need it)",
            "fix": f"ftw export --run {run} --force && ftw gguf --run {run} --keep-intermediates",
        }
    return skipped


def tokenizer_dir(run_dir: Path, plan) -> Path:
    """The fine-tune's tokenizer: merged/ keeps it when its weights are removed; the merge base's otherwise."""
    merged = manifest.load(run_dir)["artifacts"].get(artifacts.MERGED)
    return Path(merged) if merged and Path(merged).is_dir() else Path(plan.merge_base)


def _load_model(kind: str, run_dir: Path, plan, ggufs: dict[str, Path]):
    if kind == "base":
        return HfModel(Path(plan.merge_base))
    if kind == "merged":
        return HfModel(manifest.artifact(run_dir, artifacts.MERGED))
    if kind == ADAPTER_MODEL:
        base, lora = adapter_pair(run_dir)
        return GgufModel(base, n_threads=gguf_threads(base), lora=lora)
    gguf = ggufs[quant_of(kind) or ""]
    return GgufModel(gguf, n_threads=gguf_threads(gguf))


def gguf_threads(path: Path) -> int:
    """llama.cpp threads: one for a small file. Its threads spin-wait for each other, and on 2 busy
    cores two threads took 3.5 s per token of the demo's Q4_K_M where one took 0.013 s."""
    return 1 if path.stat().st_size < 1 << 30 else cpu_jobs()


def _threads_for(model) -> int:
    """One torch thread for greedy decoding of a small model on the CPU: one token's matmuls are
    too small to share, and a second thread only spins. Measured on 2 busy cores with SmolLM2-135M:
    0.06 s per token with 1 thread, 0.25 s with 2."""
    import torch

    before = torch.get_num_threads()
    if not torch.cuda.is_available() and sum(p.numel() for p in model.model.parameters()) < 1_000_000_000:
        torch.set_num_threads(1)
    return before


def answer_all(
    run_dir: Path,
    sets: EvalSets,
    rows: Journal,
    max_new_tokens: int,
    kinds: tuple[str, ...],
    ggufs: dict[str, Path],
    knowledge: KnowledgeSets | None = None,
) -> dict[str, dict[str, dict[str, dict]]]:
    """Every model answers every set; returns the knowledge sets' scored rows (kind -> set -> item id -> row)."""
    plan = manifest.plan_of(run_dir)
    titles = {kind: model_title(kind) for kind in kinds}
    tuned_tokenizer = tokenizer_dir(run_dir, plan)
    formats = {}
    known: dict[str, dict[str, dict[str, dict]]] = {}
    for kind in kinds:
        keyed = row_model(kind)
        tokenizer = plan.merge_base if kind == "base" else tuned_tokenizer
        if str(tokenizer) not in formats:
            formats[str(tokenizer)] = training_format(tokenizer, plan.template, plan.system)
        fmt = formats[str(tokenizer)]
        questions = [(s, item, max_new_tokens) for s in SETS for item in sets.items[s]]
        if knowledge is not None:
            asked = [(s, item) for s in KNOWLEDGE_SETS for item in knowledge.items[s]]
            if kind == "base":  # the base alone reads the chunk: what the fine-tune is measured against
                asked += [(facts.OPEN_BOOK, item) for item in knowledge.open_book]
            questions += [
                (s, item, answer_budget(len(fmt.encode_answer(item.messages, item.reference, item.system)[1])))
                for s, item in asked
            ]
        todo = [(s, item, budget) for s, item, budget in questions if item.key(keyed, budget) not in rows.entries]
        total = len(questions)
        if not todo:
            step(f"  {titles[kind]}: all {total} rows already scored (in {rows.path})")
        else:
            answer_rows(run_dir, plan, ggufs, kind, fmt, todo, total, rows)
        known[kind] = {}
        for s, item, budget in questions:
            if s not in SETS:
                known[kind].setdefault(s, {})[item.id] = rows.entries[item.key(keyed, budget)]
    return known


def answer_rows(
    run_dir: Path,
    plan,
    ggufs: dict[str, Path],
    kind: str,
    fmt,
    todo: list[tuple[str, Item, int]],
    total: int,
    rows: Journal,
) -> None:
    """One model answers the questions it has not answered yet; each scored row is journalled at once."""
    title = model_title(kind)
    keyed = row_model(kind)
    with spinner(f"loading the {title} model"):
        model = _load_model(kind, run_dir, plan, ggufs)
    threads = _threads_for(model) if isinstance(model, HfModel) else None
    kept = total - len(todo)
    if kept:
        step(f"  {title}: {kept} rows kept from before (in {rows.path}), {len(todo)} to answer")
    try:
        with stage_progress() as progress:
            task = progress.add_task(
                f"{title:>12}",
                total=total,
                completed=kept,
                status=f"{kept} kept from before" if kept else "",
            )
            for set_name, item, budget in todo:
                ids = fmt.encode(item.messages, item.system)
                started = time.perf_counter()
                tokens = model.greedy(ids, fmt.stop_ids(), max_tokens=budget)
                answer = fmt.decode(tokens)
                rows.append(
                    {
                        "key": item.key(keyed, budget),
                        "model": kind,
                        "set": set_name,
                        "id": item.id,
                        "prompt": item.prompt,
                        "reference": item.reference,
                        "expect": item.expect,
                        "lang": item.lang,
                        **({"fact": item.fact, "max_new_tokens": budget} if item.fact else {}),
                        "answer": answer,
                        "tokens": tokens,
                        "seconds": round(time.perf_counter() - started, 3),
                        "metrics": metrics.score(answer, item.reference, item.expect),
                    }
                )
                progress.update(task, advance=1, status=set_name)
    finally:
        if threads:
            import torch

            torch.set_num_threads(threads)  # llama.cpp and later stages get every core back
        if hasattr(model, "close"):
            model.close()


# ---------------------------------------------------------------------------------------
# perplexity in llama.cpp


def answer_nll(llm, prompt: list[int], response: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of `response` after `prompt`, and its token count."""
    import numpy as np

    tokens = prompt + response
    llm.reset()
    llm.eval(tokens)
    logits = np.asarray(llm.scores[len(prompt) - 1 : len(tokens) - 1], dtype=np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
    chosen = logits[np.arange(len(response)), response]
    return float((log_z - chosen).sum()), len(response)


def judge_answers(
    teacher, knowledge: KnowledgeSets, known: dict[str, dict[str, dict[str, dict]]], rows: Journal, seed: int
) -> dict[str, dict[str, dict[str, str | None]]]:
    """A judge model's verdict on every PROBES and UNSEEN answer (kind -> set -> item id -> verdict or None
    when it gave none), shown the reference and, when known, the chunk; journalled like the answers."""
    judged: dict[str, dict[str, dict[str, str | None]]] = {}
    for kind, by_set in known.items():
        judged[kind] = {}
        for set_name in facts.JUDGED_SETS:
            judged[kind][set_name] = {}
            todo = [item for item in knowledge.items[set_name] if item.id in by_set.get(set_name, {})]
            with spinner(f"the judge grades the {model_title(kind)} model's {len(todo)} {set_name} answers"):
                for item in todo:
                    answer = by_set[set_name][item.id]["answer"]
                    what = hashlib.sha1(f"{teacher.id}\n{answer}".encode()).hexdigest()[:12]
                    key = f"{item.key(f'judge_{row_model(kind)}', 0)}|{what}"
                    if key not in rows.entries:
                        messages = facts.judge_messages(item, answer, knowledge.chunk_texts.get(item.chunk or ""))
                        reply = teacher.complete(messages, facts.JUDGE_SCHEMA, 64, 0.0, seed)
                        verdict = facts.parse_verdict(reply.text)
                        rows.append(
                            {"key": key, "model": f"judge_{kind}", "set": set_name, "id": item.id, "verdict": verdict}
                        )
                    judged[kind][set_name][item.id] = rows.entries[key]["verdict"]
    return judged


def multiple_choice(
    run_dir: Path, knowledge: KnowledgeSets, rows: Journal, kinds: tuple[str, ...], ggufs: dict[str, Path]
) -> dict[str, list[bool]]:
    """Each model picks among four answers to each probe the one it finds likeliest (no generation, so it holds
    on tiny models); kind -> whether it picked the reference, per probe that has three distractors."""
    plan = manifest.plan_of(run_dir)
    asked = [
        (item, c)
        for item in knowledge.items["probes"]
        if (c := facts.choices_of(item, knowledge.answers, knowledge.seed))
    ]
    chosen: dict[str, list[bool]] = {}
    if not asked:
        return chosen
    for kind in kinds:
        model_key = f"mc_{row_model(kind)}"
        tokenizer = plan.merge_base if kind == "base" else tokenizer_dir(run_dir, plan)
        fmt = training_format(tokenizer, plan.template, plan.system)
        encoded = {
            item.id: [fmt.encode_answer(item.messages, option, item.system) for option in c.options]
            for item, c in asked
        }
        todo = [(item, c) for item, c in asked if item.key(model_key, 0) not in rows.entries]
        if todo:
            with spinner(f"multiple choice: the {model_title(kind)} model on {len(todo)} probes"):
                nll_of, close = _likelihood(kind, run_dir, plan, ggufs, encoded)
                try:
                    for item, c in todo:
                        nlls = [nll_of(prompt, response) for prompt, response in encoded[item.id]]
                        rows.append(
                            {
                                "key": item.key(model_key, 0),
                                "model": model_key,
                                "set": item.set,
                                "id": item.id,
                                "options": c.options,
                                "answer": c.answer,
                                "nll": [nll for nll, _ in nlls],
                                "tokens": [count for _, count in nlls],
                                "choice": facts.pick(nlls),
                            }
                        )
                finally:
                    close()
        picked = [rows.entries[item.key(model_key, 0)] for item, _ in asked]
        chosen[kind] = [row["choice"] == row["answer"] for row in picked]
    return chosen


def _likelihood(kind: str, run_dir: Path, plan, ggufs: dict[str, Path], encoded: dict[str, list]):
    """(prompt, response) -> (summed NLL, tokens) of one model, and how to let it go: transformers for the HF
    models, llama.cpp's logits for the GGUFs."""
    if kind in ("base", "merged"):
        model = _load_model(kind, run_dir, plan, ggufs)
        threads = _threads_for(model)

        def close() -> None:
            import torch

            torch.set_num_threads(threads)

        return model.answer_nll, close
    path, lora = adapter_pair(run_dir) if kind == ADAPTER_MODEL else (ggufs[quant_of(kind) or ""], None)
    n_ctx = max(len(p) + len(r) for pairs in encoded.values() for p, r in pairs) + 8
    threads = gguf_threads(path)
    llm = load_llama(
        path, lora, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=threads, n_threads_batch=threads
    )
    return (lambda prompt, response: answer_nll(llm, prompt, response)), llm.close


def perplexities(run_dir: Path, items: list[Item], rows: Journal, ggufs: dict[str, Path]) -> dict[str, dict]:
    plan = manifest.plan_of(run_dir)
    fmt = training_format(tokenizer_dir(run_dir, plan), plan.template, plan.system)
    encoded = []
    for item in items:
        prompt, response = fmt.encode_answer(item.messages, item.reference, item.system)
        encoded.append((item, prompt, response))
    result = {}
    files: dict[str, tuple[Path, Path | None]] = {}
    try:
        files["f16"] = manifest.artifact(run_dir, artifacts.gguf("f16")), None
    except FtwError as error:
        # removed after quantizing, deleted by hand, or the run converted to bf16: the rest of eval still runs
        result["f16"] = {"file": None, "rows": 0, "tokens": 0, "mean_nll": None, "perplexity": None}
        result["f16"]["skipped"] = str(error)
    for quant, path in ggufs.items():
        files[quant] = path, None
    pair = adapter_pair(run_dir)
    if pair:
        files[ADAPTER_MODEL] = pair
    for label, (path, lora) in files.items():
        model_key = f"ppl_{label.lower()}"
        todo = [e for e in encoded if e[0].key(model_key, 0) not in rows.entries]
        if todo:
            n_ctx = max(len(p) + len(r) for _, p, r in encoded) + 8
            what = f"{path.name} + {lora.name}" if lora else path.name
            with spinner(f"perplexity of {what} on {len(todo)} reference answers"):
                llm = load_llama(
                    path,
                    lora,
                    n_ctx=n_ctx,
                    n_batch=n_ctx,
                    logits_all=True,
                    n_threads=gguf_threads(path),
                    n_threads_batch=gguf_threads(path),
                )
                try:
                    for item, prompt, response in todo:
                        nll, count = answer_nll(llm, prompt, response)
                        rows.append(
                            {
                                "key": item.key(model_key, 0),
                                "model": model_key,
                                "set": item.set,
                                "id": item.id,
                                "nll": nll,
                                "tokens": count,
                            }
                        )
                finally:
                    llm.close()
        scored = [rows.entries[e[0].key(model_key, 0)] for e in encoded]
        nll, count = sum(r["nll"] for r in scored), sum(r["tokens"] for r in scored)
        result[label] = {
            "file": str(lora or path),
            "rows": len(scored),
            "tokens": count,
            "mean_nll": nll / count if count else None,
            "perplexity": math.exp(nll / count) if count else None,
        }
    return result


# ---------------------------------------------------------------------------------------
# summary


def summarize(sets: EvalSets, rows: Journal, max_new_tokens: int, kinds: tuple[str, ...]) -> dict[str, Any]:
    per_row: list[dict] = []
    aggregate: dict[str, dict] = {}
    for set_name in SETS:
        aggregate[set_name] = {}
        for kind in kinds:
            scored = [rows.entries[item.key(row_model(kind), max_new_tokens)] for item in sets.items[set_name]]
            per_row += [{**row, "model": kind} for row in scored]  # rows.jsonl's "gguf" rows: gguf:Q4_K_M
            aggregate[set_name][kind] = {
                "rows": len(scored),
                **{name: metrics.mean(r["metrics"].get(name) for r in scored) for name in metrics.METRICS},
            }

    def by_id(kind: str, set_name: str) -> dict[str, dict]:
        return {item.id: rows.entries[item.key(row_model(kind), max_new_tokens)] for item in sets.items[set_name]}

    general = {kind: by_id(kind, "general") for kind in kinds}
    forgetting: dict[str, Any] = {"rows": len(sets.items["general"])}
    known = [i for i in sets.items["general"] if general["base"][i.id]["metrics"].get("contains")]
    forgetting["known_by_base"] = len(known)
    for kind in kinds[1:]:
        lost = [i for i in known if not general[kind][i.id]["metrics"].get("contains")]
        forgetting[kind] = {
            "still_known": len(known) - len(lost),
            "forgotten": len(lost),
            "forgotten_share": len(lost) / len(known) if known else None,
            "forgotten_prompts": [
                {
                    "id": i.id,
                    "prompt": i.prompt,
                    "expect": i.expect,
                    "base_answer": general["base"][i.id]["answer"],
                    "answer": general[kind][i.id]["answer"],
                }
                for i in lost
            ],
        }

    def identical(kind: str, other: str) -> dict[str, dict]:
        same = {}
        for set_name in ("control", "val"):
            answers, others = by_id(kind, set_name), by_id(other, set_name)
            alike = [i for i in answers if answers[i]["tokens"] == others[i]["tokens"]]
            same[set_name] = {
                "rows": len(answers),
                "identical": len(alike),
                "share": len(alike) / len(answers) if answers else None,
            }
        return same

    ggufs = [kind for kind in kinds if quant_of(kind)]
    summary = {
        "aggregate": aggregate,
        "by_language": by_language(sets, rows, max_new_tokens, kinds),
        "forgetting": forgetting,
        "identical_greedy": {quant_of(k): identical("merged", k) for k in ggufs} if "merged" in kinds else None,
        "rows": per_row,
    }
    if ADAPTER_MODEL in kinds:
        main = gguf_kind(main_quant([quant_of(k) or "" for k in ggufs]))
        summary["adapter_identical_greedy"] = identical(ADAPTER_MODEL, main)
    return summary


def by_language(sets: EvalSets, rows: Journal, max_new_tokens: int, kinds: tuple[str, ...]) -> dict[str, dict]:
    """Means per set, language and model, for the sets that hold more than one language
    (a Russian + Kazakh set is judged per language, not as one)."""
    found: dict[str, dict] = {}
    for set_name in SETS:
        langs = sorted({item.lang or "unknown" for item in sets.items[set_name]})
        if len(langs) < 2:
            continue
        found[set_name] = {}
        for lang in langs:
            items = [item for item in sets.items[set_name] if (item.lang or "unknown") == lang]
            found[set_name][lang] = {
                kind: {
                    "rows": len(items),
                    **{
                        name: metrics.mean(
                            rows.entries[i.key(row_model(kind), max_new_tokens)]["metrics"].get(name) for i in items
                        )
                        for name in metrics.METRICS
                    },
                }
                for kind in kinds
            }
    return found


def knowledge_rows(knowledge: KnowledgeSets, known: dict[str, dict[str, dict[str, dict]]]) -> list[dict]:
    """The knowledge sets' answers as eval.json keeps them, each with its grade."""
    return [
        {
            **row,
            "model": kind,
            "grade": facts.grade(
                row["answer"], row["reference"], facts.question_of(set_name, row["id"], knowledge, row["prompt"])
            ),
        }
        for kind, by_set in known.items()
        for set_name, answers in by_set.items()
        for row in answers.values()
    ]


def adapter_section(pair: tuple[Path, Path], result: EvalResult, same: dict) -> dict[str, Any]:
    """The base + adapter path beside the merged quantized GGUF (the main one): sizes, perplexity, identical
    greedy answers."""
    base, lora = pair
    quant = result.main_quant
    merged = Path(result.models[gguf_kind(quant)])
    ppl = result.quantization["perplexity"]
    q4, with_adapter = ppl[quant].get("perplexity"), ppl.get(ADAPTER_MODEL, {}).get("perplexity")
    return {
        "vs_quant": quant,
        "adapter_file": str(lora),
        "base_file": str(base),
        "adapter_bytes": lora.stat().st_size,
        "base_bytes": base.stat().st_size,
        "merged_gguf_bytes": merged.stat().st_size,
        "perplexity_ratio_vs_gguf": with_adapter / q4 if q4 and with_adapter else None,
        "identical_greedy_vs_gguf": same,
    }


def ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value and reference else None


def evaluate(
    run_dir: Path,
    val_sample: int | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    measure_quant_loss: bool = True,
    build_tools: bool = True,
    quants: tuple[str, ...] = (),
    judge: tuple[str, str | None] | None = None,
) -> EvalResult:
    """Answer, score and summarise; writes runs/RUN/eval.json and returns what it holds.
    `measure_quant_loss`: the KL divergence of the quantized GGUFs (builds llama-perplexity on first use
    unless not `build_tools`). `quants`: the quantized GGUFs scored (default: every one the run has).
    `judge`: (URL or teacher, model) of a judge model that also grades the PROBES and UNSEEN answers.
    What the run no longer has (the merged weights, the f16 GGUF) is left out and named with its command."""
    plan = manifest.plan_of(run_dir)
    settings = plan_eval(plan)
    ggufs = choose_quants(run_dir, quants)
    if val_sample is not None:
        settings["val_sample"] = val_sample
    if max_new_tokens is not None:
        settings["max_new_tokens"] = max_new_tokens
    sets = load_sets(run_dir, settings)
    knowledge = facts.load_knowledge(run_dir, int(settings["val_sample"]), int(settings.get("seed") or 0))
    if limit is not None:
        for name in SETS:
            sets.items[name] = sets.items[name][:limit]
            sets.sources[name]["rows"] = len(sets.items[name])
        for name in KNOWLEDGE_SETS:
            knowledge.items[name] = knowledge.items[name][:limit]
            if name in knowledge.sources:
                knowledge.sources[name]["rows"] = len(knowledge.items[name])
    if not any(sets.items.values()) and knowledge.empty:
        raise FtwError(f"nothing to evaluate: {plan.recipe_file} has no `eval:` prompts and the run has no rows")
    count = {name: len(sets.items[name]) for name in SETS}
    kinds = model_kinds(run_dir, ggufs)
    skipped = skipped_models(run_dir, kinds)
    step(
        f"Evaluating {plan.run}: control {count['control']}, val {count['val']}, general {count['general']} "
        f"prompts x {len(kinds)} models ({', '.join(map(model_title, kinds))}), greedy, "
        f"at most {settings['max_new_tokens']} new tokens"
    )
    if not knowledge.empty:
        held = ", ".join(f"{name} {len(knowledge.items[name])}" for name in KNOWLEDGE_SETS)
        step(f"  does it know the documents: {held} questions, each as long as its reference needs")
    for what, why in skipped.items():
        step(f"  [yellow]left out[/yellow]: {what}: {why['reason']}. To score it: {why['fix']}")
    rows = Journal(run_dir / EVAL_DIR / ROWS, "key")
    max_tokens = int(settings["max_new_tokens"])
    try:
        known = answer_all(run_dir, sets, rows, max_tokens, kinds, ggufs, None if knowledge.empty else knowledge)
        chosen = multiple_choice(run_dir, knowledge, rows, kinds, ggufs)
        teacher = open_teacher(*judge) if judge and not knowledge.empty else None
        judged = judge_answers(teacher, knowledge, known, rows, int(settings.get("seed") or 0)) if teacher else None
        ppl = perplexities(run_dir, sets.items["val"] or sets.items["control"], rows, ggufs)
        if measure_quant_loss:
            seed = int(settings.get("seed") or 0)
            kld = quant_loss.measure(run_dir, plan, seed=seed, threads=gguf_threads, build_tools=build_tools)
        else:
            kld = quant_loss.skipped("not asked for (--no-quant-loss)", f"ftw eval --run {plan.run}")
    except KeyboardInterrupt:
        step(
            f"[yellow]interrupted[/yellow]: {len(rows.entries)} scored rows are kept in {rows.path}; "
            f"`ftw eval --run {plan.run}` continues from there."
        )
        raise
    finally:
        rows.close()
    summary = summarize(sets, rows, max_tokens, kinds)
    f16 = ppl["f16"].get("perplexity")
    result = EvalResult(
        run=plan.run,
        recipe=plan.recipe,
        profile=plan.profile,
        evaluated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings={**settings, "limit": limit, "decoding": "greedy", "format": plan.template, "system": plan.system},
        models={
            "base": str(plan.merge_base),
            **({"merged": str(manifest.artifact(run_dir, artifacts.MERGED))} if "merged" in kinds else {}),
            **{gguf_kind(quant): str(path) for quant, path in ggufs.items()},
        },
        gguf_quants=list(ggufs),
        skipped=skipped,
        sets=sets.sources,
        aggregate=summary["aggregate"],
        by_language=summary["by_language"],
        forgetting=summary["forgetting"],
        quantization={
            "perplexity": ppl,
            "perplexity_set": "val" if sets.items["val"] else "control",
            "perplexity_ratio": {q: ratio(ppl[q].get("perplexity"), f16) for q in ggufs},
            "identical_greedy": summary["identical_greedy"],
        },
        quant_loss=kld.to_dict(),
        rows=summary["rows"],
    )
    if not knowledge.empty:
        result.knowledge = facts.summarize(
            knowledge, known, kinds, chosen, judged, teacher.id if teacher is not None else None
        )
        result.rows += knowledge_rows(knowledge, known)
    pair = adapter_pair(run_dir)
    if pair:
        result.models[ADAPTER_MODEL] = f"{pair[0]} + {pair[1]}"
        result.adapter = adapter_section(pair, result, summary["adapter_identical_greedy"])
    result.save(run_dir)
    return result
