"""Benchmark: the language guess of `ftw data check` / `ftw data prepare`, script only (before)
against script first, then lingua where the script is shared (wrapper/data/langs.py), side by side.

Two row sets, both made in a temporary folder:

- ru/en: the first --mb MiB of the 1 GiB JSONL bench/data_prepare.py generates (its own
  generator and seed, so these are the first rows of that file); half have a `lang` field
  and are not guessed, as in scan.py;
- ru/kk: --kk-rows Alpaca rows in the same shape, Russian or Kazakh (45% Kazakh) sentences
  of the same vocabulary in each language, no `lang` field; the truth is known.

Each row's sample is built exactly as scan.py builds it (the text, or the first 1,000
characters of each of the first two turns, cut to 1,000 characters, as UTF-8), then both
guesses run over the same samples (best of --repeat, gc off). The added seconds are scaled
to the 1 GiB file by bytes (the guess is per row, so time grows linearly with the rows) and
set against the wall times in bench/results/data_prepare.json. Writes bench/results/langs.json.

    .venv/bin/python bench/langs.py                 # ~20 s on 2 cores
    .venv/bin/python bench/langs.py --mb 256 --kk-rows 100000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from repo_path import REPO

BENCH = REPO / "bench"
RESULTS = BENCH / "results" / "langs.json"
DATA_PREPARE = BENCH / "results" / "data_prepare.json"
KK_SHARE = 0.45

# RU_WORDS of bench/data_prepare.py, word for word in Kazakh.
KK_WORDS = [
    "қақпа",
    "күзетші",
    "сері",
    "өзен",
    "қала",
    "айлақ",
    "дауыл",
    "шам",
    "май",
    "тұз",
    "саудагер",
    "кеме",
    "жартас",
    "мұнара",
    "кілт",
    "кітап",
    "сот",
    "жалға алушы",
    "жалға беруші",
    "кепіл",
    "хабарлама",
    "шағым",
    "шарт",
    "тармақ",
    "төлем",
    "залал",
    "қыс",
    "жаз",
    "таң",
    "кеш",
    "айдаһар",
    "мұздық",
    "болат",
    "ай",
    "қылыш",
    "ұстахана",
    "ұста",
    "паром",
    "билет",
    "жылқы",
    "палуба",
    "кесте",
    "қайтару",
    "солтүстік",
    "теңіз",
    "сұр",
    "қара",
    "кәріптас",
    "күміс",
    "ескі",
    "жаңа",
    "ұзақ",
    "қысқа",
    "тыныш",
    "қатты",
    "ашады",
    "жабады",
    "сақтайды",
    "қайтарады",
    "тиіс",
    "мүмкін",
    "әрқашан",
    "ешқашан",
    "тек",
    "әрбір",
    "кейін",
    "дейін",
    "астында",
    "үстінде",
]

_LATIN_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1))
_SCRIPTS = (
    ("ru", (b"\xd0", b"\xd1")),
    ("el", (b"\xce", b"\xcf")),
    ("he", (b"\xd7",)),
    ("ar", (b"\xd8", b"\xd9", b"\xda", b"\xdb")),
    ("ja", (b"\xe3\x81", b"\xe3\x82", b"\xe3\x83")),
    ("zh", (b"\xe4", b"\xe5", b"\xe6", b"\xe7", b"\xe8", b"\xe9")),
    ("ko", (b"\xea", b"\xeb", b"\xec", b"\xed")),
)


def script_only_guess(sample: bytes) -> str:
    """Before: wrapper/data/formats.py's guess_language as it was, verbatim (every Cyrillic row is ru)."""
    sample = sample[:1000]
    latin = len(sample) - len(sample.translate(None, _LATIN_LETTERS))
    cyrillic = sample.count(b"\xd0") + sample.count(b"\xd1")
    if max(latin, 2 * cyrillic) * 2 > len(sample):  # mostly one of the two: no need to look further
        return "en" if latin > cyrillic else "ru"
    counts = {"en": latin}
    for lang, leads in _SCRIPTS:
        counts[lang] = sum(sample.count(lead) for lead in leads)
    if counts["ja"]:
        counts["ja"] += counts["zh"]  # Japanese mixes kana with Han
    lang, count = max(counts.items(), key=lambda item: item[1])
    return lang if count else "unknown"


def samples_of(path: Path) -> tuple[list[bytes], list[str | None], int]:
    """The samples scan.py would guess a language from (valid rows without a lang field), each
    row's `lang` field where it has one for the truth, and how many rows were read."""
    from wrapper.data.formats import detect_format, parse_row
    from wrapper.data.readers import Problem

    samples, truth, read = [], [], 0
    with path.open("rb") as handle:
        for line in handle:
            read += 1
            try:
                record = json.loads(line)
                fmt = detect_format(record)
                if fmt is None:
                    continue
                row = parse_row(record, fmt)
            except (ValueError, Problem):
                continue
            if row.lang:
                continue
            # scan.py, Scanner._finish:
            sample = row.text if row.text is not None else "\n".join(c[:1000] for _, c in row.turns[:2])
            samples.append(sample[:1000].encode("utf-8", "replace"))
            truth.append(record.get("_truth"))
    return samples, truth, read


def generate_kk(path: Path, rows: int, seed: int) -> int:
    """ru/kk rows in bench/data_prepare.py's shape; the language each was written in is kept
    under `_truth` (an unknown key: the Alpaca parser ignores it)."""
    from data_prepare import RU_WORDS, sentence_pool

    rng = random.Random(seed)
    pools = {"ru": sentence_pool(rng, RU_WORDS, 20000), "kk": sentence_pool(rng, KK_WORDS, 20000)}
    written = 0
    with path.open("wb") as out:
        for _ in range(rows):
            lang = "kk" if rng.random() < KK_SHARE else "ru"
            pool = pools[lang]
            row = {
                "instruction": rng.choice(pool)[:-1] + "?",
                "input": rng.choice(pool) if rng.random() < 0.3 else "",
                "output": " ".join(rng.choice(pool) for _ in range(rng.randint(2, 9))),
                "_truth": lang,
            }
            line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
            out.write(line)
            written += len(line)
    return written


def timed(guess, samples: list[bytes], repeat: int) -> tuple[float, float, list[str]]:
    """(first pass, best of `repeat` passes) in seconds, and the guesses."""
    times, found = [], []
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            found = [guess(sample) for sample in samples]
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return times[0], min(times), found


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="MiB of data_prepare.py's ru/en file to read (default 64)")
    parser.add_argument("--kk-rows", type=int, default=20000, help="rows of the ru/kk set (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, help="passes of each guess; the best is kept (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args()

    from data_prepare import SEED, generate

    from wrapper.data import langs

    lingua_calls: Counter = Counter()
    detect = langs._detect

    def counting(script: str, text: str) -> str | None:
        lingua_calls[script] += 1
        return detect(script, text)

    load_before = os.getloadavg()[0]
    reference = json.loads(DATA_PREPARE.read_text(encoding="utf-8"))
    full_bytes = reference["input"]["bytes"]
    work = Path(tempfile.mkdtemp(prefix="ftw-bench-langs-"))
    try:
        sets = {}
        start = time.monotonic()
        ru_en = work / "ru_en.jsonl"
        generated = generate(ru_en, options.mb * 2**20)
        ru_kk = work / "ru_kk.jsonl"
        kk_bytes = generate_kk(ru_kk, options.kk_rows, SEED)
        for name, path, size in (("ru_en", ru_en, generated["bytes"]), ("ru_kk", ru_kk, kk_bytes)):
            samples, truth, read = samples_of(path)
            sets[name] = {"path": path, "bytes": size, "rows": read, "samples": samples, "truth": truth}
        print(f"generated and parsed the two sets in {time.monotonic() - start:.1f} s", flush=True)

        results = {}
        for name, entry in sets.items():
            samples, truth = entry["samples"], entry["truth"]
            rss_before = rss_mb()
            langs._detect = counting
            try:  # how many rows reach lingua; the first rows that do load its models
                cold, _, counted = timed(langs.guess_language, samples, 1)
            finally:
                langs._detect = detect
            rss_after = rss_mb()
            old_first, old_best, old_found = timed(script_only_guess, samples, options.repeat)
            _, new_best, new_found = timed(langs.guess_language, samples, options.repeat)
            assert counted == new_found
            scale = full_bytes / entry["bytes"]
            added_1gb = (new_best - old_best) * scale
            result = {
                "rows": entry["rows"],
                "bytes": entry["bytes"],
                "guessed_rows": len(samples),
                "rows_to_lingua": dict(lingua_calls),
                "lingua_rss_added_mb": round(rss_after - rss_before),
                "script_only_s": round(old_best, 4),
                "script_then_lingua_s": round(new_best, 4),
                "script_then_lingua_cold_s": round(cold, 4),
                "us_per_row": {
                    "script_only": round(old_best / len(samples) * 1e6, 2),
                    "script_then_lingua": round(new_best / len(samples) * 1e6, 2),
                },
                "added_s": round(new_best - old_best, 4),
                "added_s_scaled_to_1gib": round(added_1gb, 2),
                "added_fraction_of_wall": {
                    command: round(added_1gb / reference[command]["wall_s"], 4) for command in ("check", "prepare")
                },
                "languages": {
                    "script_only": dict(Counter(old_found).most_common()),
                    "script_then_lingua": dict(Counter(new_found).most_common()),
                },
            }
            if all(truth):
                result["accuracy"] = {
                    "script_only": round(sum(a == b for a, b in zip(old_found, truth)) / len(truth), 5),
                    "script_then_lingua": round(sum(a == b for a, b in zip(new_found, truth)) / len(truth), 5),
                }
                result["wrong"] = {
                    "script_only": dict(Counter(f"{b}->{a}" for a, b in zip(old_found, truth) if a != b)),
                    "script_then_lingua": dict(Counter(f"{b}->{a}" for a, b in zip(new_found, truth) if a != b)),
                }
                result["truth"] = dict(Counter(truth).most_common())
            lingua_calls.clear()
            results[name] = result
            print(
                f"{name}: {entry['rows']} rows, {len(samples)} guessed; script only {old_best:.3f} s "
                f"({result['us_per_row']['script_only']} us/row), script then lingua {new_best:.3f} s "
                f"({result['us_per_row']['script_then_lingua']} us/row; cold, models loading: {cold:.3f} s), "
                f"{sum(result['rows_to_lingua'].values())} rows to lingua; scaled to 1 GiB +{added_1gb:.2f} s = "
                f"{100 * result['added_fraction_of_wall']['check']:.2f}% of check's "
                f"{reference['check']['wall_s']} s, {100 * result['added_fraction_of_wall']['prepare']:.2f}% of "
                f"prepare's {reference['prepare']['wall_s']} s",
                flush=True,
            )
            if "accuracy" in result:
                print(f"  accuracy {result['accuracy']}, wrong {result['wrong']}, truth {result['truth']}", flush=True)

        run_with = "cd <repo> && .venv/bin/python bench/langs.py"
        if options.mb != 64:
            run_with += f" --mb {options.mb}"
        if options.kk_rows != 20000:
            run_with += f" --kk-rows {options.kk_rows}"
        if options.repeat != 5:
            run_with += f" --repeat {options.repeat}"
        report = {
            "benchmark": "language guess per row, script only (before) vs script then lingua (wrapper/data/langs.py)",
            "run_with": run_with,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            },
            "lingua": _version("lingua-language-detector"),
            "reference": {
                "file": "bench/results/data_prepare.json",
                "input_bytes": full_bytes,
                "input_rows": reference["input"]["rows"],
                "check_wall_s": reference["check"]["wall_s"],
                "prepare_wall_s": reference["prepare"]["wall_s"],
            },
            "sets": results,
            "notes": (
                "Seconds are the best of --repeat passes over the same samples with gc off, after a cold "
                "pass (script_then_lingua_cold_s) that loads lingua's models where rows reach it "
                "(lingua_rss_added_mb). The guess is per row, so its time grows linearly with the rows: "
                "added_s_scaled_to_1gib = added_s x (1 GiB file bytes / set bytes). ru_en is the start of "
                "data_prepare.py's 1 GiB file, so its fraction is the one that applies to that benchmark; "
                "ru_kk's says what a 1 GiB file of that mix would add."
            ),
        }
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {options.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
