"""`ftw eval`: did the fine-tune help, did it forget, did it survive quantization?

Three models answer, greedily and in the training format (LLaMA-Factory's template):
the base model, the merged fine-tune (both transformers, float32 on the CPU) and the
Q4_K_M GGUF in llama.cpp, the file users actually run. They answer three sets:

  control  the recipe's control prompts with reference answers (`eval.control`, JSONL)
  val      the run's validation split (runs/RUN/data/val.jsonl from `ftw data prepare`),
           or a seeded sample of the recipe's dataset rows (then seen in training: it
           measures memorisation, not generalisation; eval.json and the report say so)
  general  general-knowledge prompts (`eval.general`) with the fact each answer must
           contain: the forgetting check counts those the base knew and the tune lost

Every answer is scored (wrapper/metrics.py). Quantization fidelity: perplexity of the f16
and Q4_K_M GGUFs on the reference answers of the val set (llama.cpp logits), and the
share of control prompts whose greedy answer is the same tokens from merged HF and Q4_K_M.

Each scored row is appended to runs/RUN/eval/rows.jsonl and flushed at once; a re-run
keeps the rows already there (keyed by model, set, row id and a hash of what was asked),
so an interrupted evaluation continues where it stopped. Results: runs/RUN/eval.json,
then report.md and report.html (wrapper/report.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from wrapper import manifest, metrics
from wrapper.errors import FtwError
from wrapper.fsutil import write_text_atomic
from wrapper.paths import PROJECT_ROOT
from wrapper.ui import console, done, stage_progress

EVAL_DIR = "eval"
ROWS = "rows.jsonl"
EVAL_JSON = "eval.json"
MODELS = ("base", "merged", "gguf")
MODEL_TITLES = {"base": "base", "merged": "merged HF", "gguf": "Q4_K_M GGUF"}
SETS = ("control", "val", "general")
# The metrics the tables show (terminal, report.md, report.html), in this order.
TABLE_METRICS = ("contains", "exact_match", "token_f1", "rouge_l", "key_info_recall", "length_ratio")
DEFAULTS = {"val_sample": 30, "seed": 42, "max_new_tokens": 64}


@dataclass
class Item:
    """One prompt to answer: the conversation before the answer, and the reference answer."""

    set: str
    id: str
    messages: list[dict]          # user/assistant turns, the user's last
    reference: str
    expect: str | None = None     # a phrase the answer must contain (general set, optional elsewhere)
    system: str | None = None
    lang: str | None = None

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]

    def key(self, model: str, max_new_tokens: int) -> str:
        what = json.dumps([self.messages, self.system, self.reference, self.expect, max_new_tokens], ensure_ascii=False)
        return f"{model}|{self.set}|{self.id}|{hashlib.sha1(what.encode()).hexdigest()[:12]}"


@dataclass
class EvalSets:
    items: dict[str, list[Item]] = field(default_factory=dict)
    sources: dict[str, dict] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# the sets


def _recipe_eval(plan) -> tuple[dict[str, Any], Path | None]:
    """The recipe's `eval:` section (paths resolved against the recipe's folder) and that folder."""
    from wrapper.recipes import load_recipe

    candidates = [Path(plan.recipe_file)]
    if not candidates[0].is_absolute():
        candidates.append(PROJECT_ROOT / plan.recipe_file)
    for path in candidates:
        if path.is_file():
            recipe = load_recipe(str(path.resolve()))
            return dict(recipe.eval), recipe.folder
    try:
        recipe = load_recipe(plan.recipe)
        return dict(recipe.eval), recipe.folder
    except FtwError:
        console.print(f"[yellow]note[/yellow]: recipe {plan.recipe_file} not found; no control or general prompts")
        return {}, None


def read_prompt_file(path: Path, set_name: str) -> list[Item]:
    """A JSONL of {"id"?, "prompt", "reference", "expect"?, "lang"?} rows (general: "expect" required)."""
    if not path.is_file():
        raise FtwError(f"eval prompts file not found: {path}")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FtwError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), str)
                and isinstance(row.get("reference", row.get("expect")), str)):
            raise FtwError(f"{path}:{number}: each row needs 'prompt' and 'reference' strings")
        if set_name == "general" and not isinstance(row.get("expect"), str):
            raise FtwError(f"{path}:{number}: a general-knowledge row needs 'expect', the fact its answer must contain")
        items.append(Item(set_name, str(row.get("id", number)), [{"role": "user", "content": row["prompt"]}],
                          row.get("reference") or row["expect"], row.get("expect"), row.get("system"), row.get("lang")))
    return items


def _conversation_rows(path: Path) -> list[tuple[list[dict], str, str | None, str | None]]:
    """(messages before the last answer, that answer, system, lang) of each conversation row of a file."""
    from wrapper.data_formats import ASSISTANT, USER, detect_format, parse_row, read_json_records

    rows = []
    for record in read_json_records(path):
        if record.problem is not None:
            continue
        fmt = detect_format(record.value)
        if fmt in (None, "text", "mapped"):
            continue
        try:
            row = parse_row(record.value, fmt)
        except Exception:  # noqa: BLE001 - `ftw data check` reports bad rows; evaluation skips them
            continue
        turns = [(role, content) for role, content in row.turns if role in (USER, ASSISTANT)]
        if len(turns) < 2 or turns[-1][0] != ASSISTANT or turns[-2][0] != USER:
            continue
        messages = [{"role": "user" if role == USER else "assistant", "content": content} for role, content in turns[:-1]]
        rows.append((messages, turns[-1][1], row.system, row.lang))
    return rows


def load_sets(run_dir: Path, settings: dict[str, Any], folder: Path | None) -> EvalSets:
    plan = manifest.plan_of(run_dir)
    sets = EvalSets()
    for name in ("control", "general"):
        if settings.get(name):
            path = Path(settings[name])
            path = path if path.is_absolute() or folder is None else (folder / path)
            sets.items[name] = read_prompt_file(path.resolve(), name)
            sets.sources[name] = {"file": str(path.resolve()), "rows": len(sets.items[name])}
        else:
            sets.items[name] = []
            sets.sources[name] = {"file": None, "rows": 0}

    prepared = run_dir / "data" / "val.jsonl"
    if prepared.is_file() and prepared.stat().st_size:
        rows, source, seen = _conversation_rows(prepared), str(prepared), False
    else:
        rows, seen = [], True
        for dataset in plan.datasets:
            rows += _conversation_rows(Path(dataset["path"]))
        source = ", ".join(str(d["path"]) for d in plan.datasets)
    sample = int(settings["val_sample"])
    picked = sorted(random.Random(settings["seed"]).sample(range(len(rows)), min(sample, len(rows)))) if sample else []
    sets.items["val"] = [Item("val", f"row{index}", messages, answer, None, system, lang)
                         for index in picked for messages, answer, system, lang in [rows[index]]]
    sets.sources["val"] = {"file": source, "rows": len(sets.items["val"]), "of": len(rows),
                           "seen_in_training": seen, "seed": settings["seed"],
                           "note": ("a seeded sample of the training rows (no validation split: run `ftw data "
                                    "prepare`); it measures memorisation, not generalisation") if seen
                           else "held-out validation split from `ftw data prepare`"}
    return sets


# ---------------------------------------------------------------------------------------
# answering


class Rows:
    """runs/RUN/eval/rows.jsonl: every scored row, appended and flushed one by one."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, dict] = {}
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by an interruption
            self.done[row["key"]] = row
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a", encoding="utf-8")
        if text and not text.endswith("\n"):
            self.handle.write("\n")  # end the cut-off line, or the next row would join it and be lost

    def add(self, row: dict) -> None:
        self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.handle.flush()
        self.done[row["key"]] = row

    def close(self) -> None:
        self.handle.close()


def _format_for(fmt, item: Item):
    return replace(fmt, system=item.system) if item.system else fmt


def _load_model(kind: str, run_dir: Path, plan):
    from wrapper.inference import GgufModel, HfModel

    if kind == "base":
        return HfModel(Path(plan.merge_base))
    if kind == "merged":
        return HfModel(manifest.artifact(run_dir, "merged", "ftw export"))
    path = manifest.artifact(run_dir, "gguf_q4_k_m", "ftw gguf")
    return GgufModel(path, n_threads=gguf_threads(path))


def gguf_threads(path: Path) -> int:
    """llama.cpp threads: one for a small file. Its threads spin-wait for each other, and on 2 busy
    cores two threads took 3.5 s per token of the demo's Q4_K_M where one took 0.013 s."""
    import os

    return 1 if path.stat().st_size < 1 << 30 else (os.cpu_count() or 1)


def _threads_for(model) -> int:
    """One torch thread for greedy decoding of a small model on the CPU: one token's matmuls are
    too small to share, and a second thread only spins. Measured on 2 busy cores with SmolLM2-135M:
    0.06 s per token with 1 thread, 0.25 s with 2."""
    import torch

    before = torch.get_num_threads()
    if not torch.cuda.is_available() and sum(p.numel() for p in model.model.parameters()) < 1_000_000_000:
        torch.set_num_threads(1)
    return before


def answer_all(run_dir: Path, sets: EvalSets, rows: Rows, max_new_tokens: int) -> None:
    from wrapper.inference import chat_format

    plan = manifest.plan_of(run_dir)
    merged_dir = manifest.artifact(run_dir, "merged", "ftw export")
    manifest.artifact(run_dir, "gguf_q4_k_m", "ftw gguf")
    formats = {}
    for kind in MODELS:
        todo = [(s, item) for s in SETS for item in sets.items[s] if item.key(kind, max_new_tokens) not in rows.done]
        total = sum(len(sets.items[s]) for s in SETS)
        if not todo:
            console.print(f"  {MODEL_TITLES[kind]}: all {total} rows already scored (in {rows.path})")
            continue
        tokenizer_dir = plan.merge_base if kind == "base" else merged_dir
        if str(tokenizer_dir) not in formats:
            formats[str(tokenizer_dir)] = chat_format(tokenizer_dir, plan.template, plan.system)
        fmt = formats[str(tokenizer_dir)]
        with console.status(f"loading the {MODEL_TITLES[kind]} model"):
            model = _load_model(kind, run_dir, plan)
        threads = _threads_for(model) if kind != "gguf" else None
        kept = total - len(todo)
        if kept:
            console.print(f"  {MODEL_TITLES[kind]}: {kept} rows kept from before (in {rows.path}), {len(todo)} to answer")
        try:
            with stage_progress() as progress:
                task = progress.add_task(f"{MODEL_TITLES[kind]:>12}", total=total, completed=kept,
                                         status=f"{kept} kept from before" if kept else "")
                for set_name, item in todo:
                    item_fmt = _format_for(fmt, item)
                    ids = item_fmt.conversation_ids(item.messages)
                    started = time.perf_counter()
                    tokens = model.greedy(ids, item_fmt.stop_ids(), max_tokens=max_new_tokens)
                    answer = item_fmt.decode(tokens)
                    rows.add({"key": item.key(kind, max_new_tokens), "model": kind, "set": set_name, "id": item.id,
                              "prompt": item.prompt, "reference": item.reference, "expect": item.expect,
                              "lang": item.lang, "answer": answer, "tokens": tokens,
                              "seconds": round(time.perf_counter() - started, 3),
                              "metrics": metrics.score(answer, item.reference, item.expect)})
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
    logits = np.asarray(llm.scores[len(prompt) - 1:len(tokens) - 1], dtype=np.float64)
    peak = logits.max(axis=1, keepdims=True)
    log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
    chosen = logits[np.arange(len(response)), response]
    return float((log_z - chosen).sum()), len(response)


def perplexities(run_dir: Path, items: list[Item], rows: Rows) -> dict[str, dict]:
    from llama_cpp import Llama

    from wrapper.inference import chat_format

    plan = manifest.plan_of(run_dir)
    fmt = chat_format(manifest.artifact(run_dir, "merged", "ftw export"), plan.template, plan.system)
    encoded = []
    for item in items:
        messages = item.messages + [{"role": "assistant", "content": item.reference}]
        prompt, response = fmt.template.encode_oneturn(fmt.tokenizer, messages, item.system or plan.system)
        encoded.append((item, list(prompt), list(response)))
    result = {}
    for quant, key in (("f16", "gguf_f16"), ("Q4_K_M", "gguf_q4_k_m")):
        path = manifest.artifact(run_dir, key, "ftw gguf")
        model_key = f"ppl_{quant.lower()}"
        todo = [e for e in encoded if e[0].key(model_key, 0) not in rows.done]
        if todo:
            n_ctx = max(len(p) + len(r) for _, p, r in encoded) + 8
            with console.status(f"perplexity of {path.name} on {len(todo)} reference answers"):
                llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                            n_threads=gguf_threads(path), n_threads_batch=gguf_threads(path), seed=0, verbose=False)
                try:
                    for item, prompt, response in todo:
                        nll, count = answer_nll(llm, prompt, response)
                        rows.add({"key": item.key(model_key, 0), "model": model_key, "set": item.set, "id": item.id,
                                  "nll": nll, "tokens": count})
                finally:
                    llm.close()
        scored = [rows.done[e[0].key(model_key, 0)] for e in encoded]
        nll, count = sum(r["nll"] for r in scored), sum(r["tokens"] for r in scored)
        result[quant] = {"file": str(path), "rows": len(scored), "tokens": count,
                         "mean_nll": nll / count if count else None,
                         "perplexity": math.exp(nll / count) if count else None}
    return result


# ---------------------------------------------------------------------------------------
# summary


def summarize(sets: EvalSets, rows: Rows, max_new_tokens: int) -> dict[str, Any]:
    per_row: list[dict] = []
    aggregate: dict[str, dict] = {}
    for set_name in SETS:
        aggregate[set_name] = {}
        for kind in MODELS:
            scored = [rows.done[item.key(kind, max_new_tokens)] for item in sets.items[set_name]]
            per_row += scored
            aggregate[set_name][kind] = {"rows": len(scored), **{
                name: metrics.mean(r["metrics"].get(name) for r in scored) for name in metrics.METRICS}}

    def by_id(kind: str, set_name: str) -> dict[str, dict]:
        return {item.id: rows.done[item.key(kind, max_new_tokens)] for item in sets.items[set_name]}

    general = {kind: by_id(kind, "general") for kind in MODELS}
    forgetting: dict[str, Any] = {"rows": len(sets.items["general"])}
    known = [i for i in sets.items["general"] if general["base"][i.id]["metrics"].get("contains")]
    forgetting["known_by_base"] = len(known)
    for kind in ("merged", "gguf"):
        lost = [i for i in known if not general[kind][i.id]["metrics"].get("contains")]
        forgetting[kind] = {
            "still_known": len(known) - len(lost),
            "forgotten": len(lost),
            "forgotten_share": len(lost) / len(known) if known else None,
            "forgotten_prompts": [{"id": i.id, "prompt": i.prompt, "expect": i.expect,
                                   "base_answer": general["base"][i.id]["answer"],
                                   "answer": general[kind][i.id]["answer"]} for i in lost],
        }

    same = {}
    for set_name in ("control", "val"):
        merged, gguf = by_id("merged", set_name), by_id("gguf", set_name)
        identical = [i for i in merged if merged[i]["tokens"] == gguf[i]["tokens"]]
        same[set_name] = {"rows": len(merged), "identical": len(identical),
                          "share": len(identical) / len(merged) if merged else None}
    return {"aggregate": aggregate, "forgetting": forgetting, "identical_greedy": same, "rows": per_row}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_tables(result: dict[str, Any]) -> None:
    table = Table(title=f"{result['run']}: evaluation (greedy, training format; means per row)", show_lines=False)
    table.add_column("set")
    table.add_column("metric")
    for kind in MODELS:
        table.add_column(MODEL_TITLES[kind], justify="right")
    for set_name in SETS:
        block = result["aggregate"][set_name]
        if not block["base"]["rows"]:
            continue
        label = f"{set_name} ({block['base']['rows']})"
        for name in TABLE_METRICS:
            if all(block[k][name] is None for k in MODELS):
                continue
            table.add_row(label, name, *(_fmt(block[k][name]) for k in MODELS))
            label = ""
        table.add_section()
    console.print(table)
    if result["sets"]["val"].get("seen_in_training"):
        console.print(f"  val: {result['sets']['val']['note']}")
    forgetting = result["forgetting"]
    if forgetting["rows"]:
        gguf = forgetting["gguf"]
        console.print(f"Forgetting: the base model knew {forgetting['known_by_base']} of {forgetting['rows']} "
                      f"general prompts; the Q4_K_M GGUF forgot {gguf['forgotten']} of them "
                      f"(merged HF: {forgetting['merged']['forgotten']}).")
        for lost in gguf["forgotten_prompts"]:
            console.print(f"  [red]forgot[/red] {escape(lost['prompt'])}  base: {escape(lost['base_answer'])!s}  "
                          f"→ GGUF: {escape(lost['answer'])}")
    quant = result["quantization"]
    ppl = quant["perplexity"]
    same = quant["identical_greedy"]["control"]
    parts = []
    if ppl.get("f16", {}).get("perplexity") is not None:
        parts.append(f"perplexity on {ppl['f16']['rows']} reference answers: f16 {ppl['f16']['perplexity']:.3f}, "
                     f"Q4_K_M {ppl['Q4_K_M']['perplexity']:.3f} (x{quant['perplexity_ratio']:.3f})")
    if same["rows"]:
        parts.append(f"identical greedy answers merged HF vs Q4_K_M: {same['identical']}/{same['rows']} control prompts")
    if parts:
        console.print("Quantization: " + "; ".join(parts) + ".")


def check_intermediates_kept(run_dir: Path, run: str) -> None:
    """The merged model and the f16 GGUF are two of the models compared; `ftw gguf` removes them by default."""
    removed = manifest.removed_intermediates(run_dir)
    if removed:
        what = " and ".join("the merged weights" if key == "merged" else f"the {key.removeprefix('gguf_')} GGUF"
                            for key in removed)
        raise FtwError(f"ftw eval compares the merged model and the f16 GGUF with the Q4_K_M file, and `ftw gguf` "
                       f"removed {what} after quantizing, to free disk. Make them again and keep them: "
                       f"ftw export --run {run} --force && ftw gguf --run {run} --keep-intermediates")


def evaluate(run_dir: Path, val_sample: int | None = None, limit: int | None = None,
             max_new_tokens: int | None = None, write_report: bool = True) -> dict[str, Any]:
    plan = manifest.plan_of(run_dir)
    check_intermediates_kept(run_dir, plan.run)
    recipe_settings, folder = _recipe_eval(plan)
    settings = {**DEFAULTS, **{k: v for k, v in recipe_settings.items() if v is not None}}
    if val_sample is not None:
        settings["val_sample"] = val_sample
    if max_new_tokens is not None:
        settings["max_new_tokens"] = max_new_tokens
    sets = load_sets(run_dir, settings, folder)
    if limit is not None:
        for name in SETS:
            sets.items[name] = sets.items[name][:limit]
            sets.sources[name]["rows"] = len(sets.items[name])
    if not any(sets.items.values()):
        raise FtwError(f"nothing to evaluate: {plan.recipe_file} has no `eval:` prompts and the run has no rows")
    count = {name: len(sets.items[name]) for name in SETS}
    console.print(f"Evaluating {plan.run}: control {count['control']}, val {count['val']}, general {count['general']} "
                  f"prompts x {len(MODELS)} models, greedy, at most {settings['max_new_tokens']} new tokens")
    rows = Rows(run_dir / EVAL_DIR / ROWS)
    max_tokens = int(settings["max_new_tokens"])
    try:
        answer_all(run_dir, sets, rows, max_tokens)
        ppl = perplexities(run_dir, sets.items["val"] or sets.items["control"], rows)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/yellow]: {len(rows.done)} scored rows are kept in {rows.path}; "
                      f"`ftw eval --run {plan.run}` continues from there.")
        raise
    finally:
        rows.close()
    summary = summarize(sets, rows, max_tokens)
    f16, q4 = ppl["f16"].get("perplexity"), ppl["Q4_K_M"].get("perplexity")
    result = {
        "run": plan.run,
        "recipe": plan.recipe,
        "profile": plan.profile,
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {**settings, "limit": limit, "decoding": "greedy", "format": plan.template,
                     "system": plan.system},
        "models": {"base": str(plan.merge_base), "merged": str(manifest.artifact(run_dir, "merged", "ftw export")),
                   "gguf": str(manifest.artifact(run_dir, "gguf_q4_k_m", "ftw gguf"))},
        "sets": sets.sources,
        "aggregate": summary["aggregate"],
        "forgetting": summary["forgetting"],
        "quantization": {
            "perplexity": ppl,
            "perplexity_set": "val" if sets.items["val"] else "control",
            "perplexity_ratio": q4 / f16 if f16 and q4 else None,
            "identical_greedy": summary["identical_greedy"],
        },
        "rows": summary["rows"],
    }
    write_text_atomic(run_dir / EVAL_JSON, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    print_tables(result)
    if write_report:
        from wrapper.report import write_report as write_run_report

        paths = write_run_report(run_dir)
        done(f"{run_dir / EVAL_JSON}, {paths[0]}, {paths[1]}")
    return result
