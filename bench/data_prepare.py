"""Benchmark: `ftw data check` and `ftw data prepare` on a ~1 GB JSONL, in bounded memory.

Generates a seeded synthetic Alpaca JSONL (mixed Russian and English, with invalid rows of
every kind, exact and near duplicates) in a temporary folder, runs both commands as child
processes with the demo recipe (SmolLM2's tokenizer and template, so token lengths are
counted too), samples the peak RSS of each child's process tree every 50 ms, and writes
bench/results/data_prepare.json: rows/s, MB/s, peak VmRSS and RssAnon, wall time, the row
counts the commands reported, and the exact commands.

    .venv/bin/python bench/data_prepare.py              # ~1 GB, ~10 minutes on 2 cores
    .venv/bin/python bench/data_prepare.py --mb 50      # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from repo_path import REPO

from tests.support.runner import FTW

RESULTS = REPO / "bench" / "results" / "data_prepare.json"
SEED = 20261123

EN_WORDS = [
    "the",
    "gate",
    "guard",
    "knight",
    "river",
    "city",
    "harbour",
    "storm",
    "lamp",
    "oil",
    "salt",
    "trader",
    "ship",
    "cliff",
    "tower",
    "key",
    "ledger",
    "court",
    "tenant",
    "landlord",
    "deposit",
    "notice",
    "appeal",
    "contract",
    "clause",
    "rent",
    "damage",
    "winter",
    "summer",
    "dawn",
    "dusk",
    "dragon",
    "glacier",
    "steel",
    "moon",
    "sword",
    "forge",
    "smith",
    "ferry",
    "ticket",
    "horse",
    "deck",
    "timetable",
    "refund",
    "north",
    "sea",
    "grey",
    "black",
    "amber",
    "silver",
    "old",
    "new",
    "long",
    "short",
    "quiet",
    "loud",
    "early",
    "late",
    "opens",
    "closes",
    "keeps",
    "returns",
    "must",
    "may",
    "shall",
    "will",
    "never",
    "always",
    "only",
    "every",
    "within",
    "after",
    "before",
    "under",
    "above",
    "across",
]  # noqa: E501
RU_WORDS = [
    "врата",
    "страж",
    "рыцарь",
    "река",
    "город",
    "гавань",
    "шторм",
    "лампа",
    "масло",
    "соль",
    "торговец",
    "корабль",
    "скала",
    "башня",
    "ключ",
    "книга",
    "суд",
    "арендатор",
    "арендодатель",
    "залог",
    "уведомление",
    "жалоба",
    "договор",
    "пункт",
    "плата",
    "ущерб",
    "зима",
    "лето",
    "рассвет",
    "закат",
    "дракон",
    "ледник",
    "сталь",
    "луна",
    "меч",
    "кузница",
    "кузнец",
    "паром",
    "билет",
    "лошадь",
    "палуба",
    "расписание",
    "возврат",
    "север",
    "море",
    "серый",
    "чёрный",
    "янтарный",
    "серебряный",
    "старый",
    "новый",
    "долгий",
    "короткий",
    "тихий",
    "громкий",
    "открывает",
    "закрывает",
    "хранит",
    "возвращает",
    "должен",
    "может",
    "всегда",
    "никогда",
    "только",
    "каждый",
    "после",
    "до",
    "под",
    "над",
]  # noqa: E501


def sentence_pool(rng: random.Random, words: list[str], count: int) -> list[str]:
    pool = []
    for _ in range(count):
        chosen = [rng.choice(words) for _ in range(rng.randint(6, 18))]
        pool.append(chosen[0].capitalize() + " " + " ".join(chosen[1:]) + rng.choice(".!."))
    return pool


def generate(path: Path, target_bytes: int) -> dict:
    """Write the benchmark JSONL; return how many rows of each kind it holds."""
    rng = random.Random(SEED)
    pools = {"en": sentence_pool(rng, EN_WORDS, 20000), "ru": sentence_pool(rng, RU_WORDS, 20000)}
    kinds = {"rows": 0, "valid": 0, "invalid": 0, "exact_copies": 0, "near_copies": 0}
    recent: list[dict] = []
    written = 0
    with path.open("wb") as out:
        while written < target_bytes:
            roll = rng.random()
            if roll < 0.01 and recent:  # exact copy of a recent row
                row, kind = dict(rng.choice(recent)), "exact_copies"
            elif roll < 0.015 and recent:  # near copy: case and spaces changed
                row = dict(rng.choice(recent))
                row["output"] = "  " + row["output"].upper().replace(" ", "  ")
                kind = "near_copies"
            elif roll < 0.017:  # invalid rows of every kind
                line = invalid_line(rng)
                out.write(line)
                written += len(line)
                kinds["rows"] += 1
                kinds["invalid"] += 1
                continue
            else:
                lang = "ru" if rng.random() < 0.45 else "en"
                pool = pools[lang]
                row = {
                    "instruction": rng.choice(pool)[:-1] + "?",
                    "input": rng.choice(pool) if rng.random() < 0.3 else "",
                    "output": " ".join(rng.choice(pool) for _ in range(rng.randint(2, 9))),
                }
                if rng.random() < 0.5:
                    row["lang"] = lang
                kind = "valid"
                recent.append(row)
                if len(recent) > 1000:
                    recent.pop(rng.randrange(len(recent)))
            line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
            out.write(line)
            written += len(line)
            kinds["rows"] += 1
            kinds[kind if kind != "valid" else "valid"] += 1
    kinds["bytes"] = written
    return kinds


def invalid_line(rng: random.Random) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return b'{"instruction": "broken", "output": "no closing brace"\n'
    if choice == 1:
        return json.dumps({"instruction": "Where is the key?", "input": ""}).encode() + b"\n"
    if choice == 2:
        return json.dumps({"instruction": "Count", "input": "", "output": 42}).encode() + b"\n"
    if choice == 3:
        return json.dumps({"instruction": "  ", "input": "", "output": "Empty question."}).encode() + b"\n"
    if choice == 4:
        return '{"instruction": "Кто хранит ключ?", "output": "Стражник."}\n'.encode("cp1251")
    return json.dumps({"question": "What?", "answer": "That."}).encode() + b"\n"


def tree_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) in bytes summed over a process and its descendants."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    rss = anon = 0
    for proc in procs:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        for key, target in (("VmRSS", "rss"), ("RssAnon", "anon")):
            match = re.search(rf"^{key}:\s+(\d+) kB", status, re.M)
            if match:
                if target == "rss":
                    rss += int(match.group(1)) * 1024
                else:
                    anon += int(match.group(1)) * 1024
    return rss, anon


def measure(command: list[str], env: dict, log: Path) -> dict:
    peak = {"rss": 0, "anon": 0}
    start = time.monotonic()
    with log.open("w") as out:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss, anon = tree_memory(child.pid)
                peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        stop.set()
        sampler.join()
    wall = time.monotonic() - start
    return {
        "exit_code": code,
        "wall_s": round(wall, 1),
        "peak_vmrss_mb": round(peak["rss"] / 2**20),
        "peak_rssanon_mb": round(peak["anon"] / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="size of the generated JSONL in MiB (default 1024)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ftw-bench-data-"))
    try:
        data = work / "bench.jsonl"
        started = time.monotonic()
        generated = generate(data, options.mb * 2**20)
        generate_s = time.monotonic() - started
        print(
            f"generated {data} ({generated['bytes'] / 2**20:.0f} MiB, {generated['rows']} rows) in {generate_s:.0f} s",
            flush=True,
        )
        env = dict(os.environ, FTW_RUNS_DIR=str(work / "runs"), COLUMNS="120")
        commands = {
            "check": [*FTW, "data", "check", "--recipe", "demo", "--max-problems", "20", str(data)],
            "prepare": [*FTW, "data", "prepare", "--recipe", "demo", "--data", str(data), "--run", "bench"],
        }
        # The same command on an 8-row file: the memory of Python with the tokenizer and
        # LLaMA-Factory's template loaded, before any data.
        baseline = measure(
            [*FTW, "data", "check", "--recipe", "demo", "data/samples/alpaca.jsonl"], env, work / "baseline.log"
        )
        print(
            f"baseline (8 rows): peak VmRSS {baseline['peak_vmrss_mb']} MiB, RssAnon {baseline['peak_rssanon_mb']} "
            f"MiB, {baseline['wall_s']} s",
            flush=True,
        )
        results = {}
        for name, command in commands.items():
            result = measure(command, env, work / f"{name}.log")
            output = (work / f"{name}.log").read_text(errors="replace")
            result["rows_per_s"] = round(generated["rows"] / result["wall_s"])
            result["mb_per_s"] = round(generated["bytes"] / 2**20 / result["wall_s"], 1)
            result["command"] = " ".join(["ftw", *command[len(FTW) :]]).replace(str(data), "$TMP/bench.jsonl")
            result["output_tail"] = output.strip().splitlines()[-14:]
            results[name] = result
            print(
                f"{name}: exit {result['exit_code']}, {result['wall_s']} s, {result['rows_per_s']} rows/s, "
                f"{result['mb_per_s']} MiB/s, peak VmRSS {result['peak_vmrss_mb']} MiB, "
                f"RssAnon {result['peak_rssanon_mb']} MiB",
                flush=True,
            )
        prepared = json.loads((work / "runs" / "bench" / "data" / "prepared.json").read_text())
        report = {
            "benchmark": "ftw data check + ftw data prepare on a synthetic ~1 GB Alpaca JSONL (ru/en)",
            "run_with": "cd <repo> && .venv/bin/python bench/data_prepare.py"
            + (f" --mb {options.mb}" if options.mb != 1024 else ""),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "input": {**generated, "mib": round(generated["bytes"] / 2**20), "generate_s": round(generate_s)},
            "baseline_8_rows": {**baseline, "command": "ftw data check --recipe demo data/samples/alpaca.jsonl"},
            "check": results["check"],
            "prepare": results["prepare"],
            "prepared_counts": prepared["counts"],
            "notes": (
                "check exits 1 because the input holds invalid rows on purpose. Peak memory is sampled every "
                "50 ms over the child's process tree; VmRSS includes mapped files, RssAnon does not. "
                "Token lengths are counted (SmolLM2 tokenizer, smollm2 template) in both commands."
            ),
        }
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {options.out}")
    finally:
        if options.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
