"""The publish stage: runs/RUN/publish, the exact folder `ftw publish` uploads.

    RUN-Q4_K_M.gguf ...   the quantized GGUF(s), named so that the quant is the last label in the
                          name: Ollama's hf.co tags, the Hub's quant parser and llama.cpp's -hf pick by it
    template, system, params   what Ollama reads from a Hub repository (ollama_files.py)
    Modelfile             the run's verified Modelfile, FROM the GGUF beside it
    README.md             the model card (card.py)
    adapter/lora-adapter.gguf  the LoRA as a GGUF, when `ftw adapter` made one (a name with
                          no quant label: no tag can pick it)
    data/                 the training files, only with --include-data

It is built like every artifact (wrapper/core/stage.py): into publish.partial, checked, then
renamed. The GGUFs are relative symbolic links into gguf/, not copies (gigabytes); huggingface_hub's
upload_folder lists files with Path.is_file() and reads them by path, both of which follow links.
"""

from __future__ import annotations

import functools
import json
import mmap
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from wrapper.config.ollama import OLLAMA_PARAMETERS
from wrapper.core import artifacts, manifest, stage
from wrapper.core.errors import FtwError
from wrapper.core.eval_result import EVAL_JSON
from wrapper.core.fsutil import write_text_exact
from wrapper.core.gguf_io import DEFAULT_QUANT, GGUF_MAGIC
from wrapper.core.paths import TEMPLATES_DIR, relative_or_absolute
from wrapper.core.plan import RunPlan
from wrapper.core.ui import step
from wrapper.publish import card, hub
from wrapper.publish.ollama_files import MODELFILE, PARAMS_FILE, SYSTEM_FILE, TEMPLATE_FILE, OllamaFiles, repo_modelfile

# Makes the run's Modelfile for a quant (ftw modelfile's stage), handed in by the command.
Remake = Callable[[str], Path]
PUBLISH_DIR = "publish"
README = "README.md"
ADAPTER_FILE = "adapter/lora-adapter.gguf"
DATA_DIR = "data"


@dataclass(frozen=True)
class PublishSettings:
    """What `ftw publish` was asked for."""

    repo_id: str
    quants: tuple[str, ...]  # empty: every quantized GGUF the run has
    private: bool = False
    include_data: bool = False
    base_model: str | None = None  # the base's Hub id where the run trained from a local folder
    license: str | None = None  # where the base's card can't be read


def run_quants(run_dir: Path) -> list[str]:
    """The quantized GGUFs the run has, by quant name, in QUANT_TYPES' order (Q4_K_M first)."""
    return list(manifest.quantized_ggufs(run_dir))


def chosen_quants(run_dir: Path, asked: tuple[str, ...]) -> list[str]:
    have = run_quants(run_dir)
    run = run_dir.name
    if not have:
        raise FtwError(f"run {run} has no quantized GGUF to publish. Make one first: ftw gguf --run {run}")
    missing = [quant for quant in asked if quant not in have]
    if missing:
        raise FtwError(
            f"run {run} has no {', '.join(missing)} GGUF (it has {', '.join(have)}). "
            f"Make it first: ftw gguf --run {run} --quant {missing[0]}"
        )
    return [quant for quant in have if quant in asked] if asked else have


def modelfile_changes(run_dir: Path, plan: RunPlan) -> tuple[str, list[str]]:
    """(the quant the run's Modelfile serves, what it was made from that differs now: the GGUF, the chat
    template, the Ollama parameters, as `ftw modelfile` recorded them)."""
    recorded = stage.recorded_inputs(run_dir, artifacts.MODELFILE) or {}
    name, _, digest = recorded.get("GGUF", "").partition(" ")
    quant = name.removeprefix(f"{run_dir.name}-").removesuffix(".gguf") or DEFAULT_QUANT
    now = {
        "GGUF": stage.recorded_digest(run_dir, artifacts.gguf(quant)),
        "chat template": stage.value_digest([plan.template, plan.system]),
        "ollama parameters": stage.short_value(plan.ollama_parameters),
    }
    before = {"GGUF": digest or None, **{key: recorded.get(key) for key in now if key != "GGUF"}}
    return quant, [key for key, value in before.items() if value is not None and value != now[key]]


def run_modelfile(run_dir: Path, plan: RunPlan, default_quant: str, remake: Remake | None = None) -> Path:
    """The run's Modelfile, made from the GGUF, template and parameters the run has now, else the Hub would
    serve a template nobody checked against this model. A missing or stale one is made again by `remake`
    (`ftw modelfile`'s stage: seconds) when given; else refused with the command."""
    declared = artifacts.declared(artifacts.MODELFILE)
    path = manifest.load(run_dir)["artifacts"].get(declared.key)
    if not path or not Path(path).is_file():
        if remake is None:
            return manifest.artifact(run_dir, declared.key)  # raises, naming the command
        step(f"No Modelfile yet: writing it ({declared.command_for(run_dir.name)}).")
        return remake(default_quant)
    quant, changed = modelfile_changes(run_dir, plan)
    if not changed:
        return Path(path)
    if remake is None:
        raise FtwError(
            f"{path} was made from an earlier {' and '.join(changed)}; the Hub would serve a template nobody "
            f"checked. Write it again: ftw modelfile --run {run_dir.name} --quant {quant}"
        )
    step(f"The Modelfile was made from an earlier {' and '.join(changed)}: writing it again.")
    return remake(quant)


def data_names(datasets: list[dict]) -> list[tuple[Path, str]]:
    """(file, path in the repository) of each training file: data/NAME, a number in front where two share one."""
    found: list[tuple[Path, str]] = []
    for number, dataset in enumerate(datasets, 1):
        source = Path(dataset["path"])
        name = f"{DATA_DIR}/{source.name}"
        if any(name == taken for _, taken in found):
            name = f"{DATA_DIR}/{number}-{source.name}"
        found.append((source, name))
    return found


class PublishStage:
    """runs/RUN/publish: the folder to upload, checked before it is kept."""

    title = "publish folder"
    force_says = "makes it again"

    def __init__(self, run_dir: Path, settings: PublishSettings, remake_modelfile: Remake | None = None):
        self.run_dir, self.key, self.target = run_dir, artifacts.PUBLISH, run_dir / PUBLISH_DIR
        self.logs: dict[str, Path] = {}
        self.settings = settings
        self.quants = chosen_quants(run_dir, settings.quants)
        self.plan = manifest.plan_of(run_dir)
        self.default_quant = DEFAULT_QUANT if DEFAULT_QUANT in self.quants else self.quants[0]
        self.ggufs = {quant: manifest.artifact(run_dir, artifacts.gguf(quant)) for quant in self.quants}
        self.modelfile = run_modelfile(run_dir, self.plan, self.default_quant, remake_modelfile)
        self.adapter = adapter_gguf(run_dir)
        self.base = card.base_of(self.plan, settings.base_model, settings.license)
        self.languages = card.training_languages(run_dir, self.plan)

    def gguf_name(self, quant: str) -> str:
        return f"{self.plan.run}-{quant}.gguf"

    def inputs(self) -> stage.StageInputs:
        values = {
            "repo": self.settings.repo_id,
            "Modelfile": stage.file_digest(self.modelfile),
            "plan": stage.value_digest(asdict(self.plan)),
            # Plain words: the stage prints changed inputs through rich, which reads [..] as markup.
            "base": f"{self.base.hub_id or self.base.name}, license {self.base.license.get('license', 'unknown')}",
            "languages": ", ".join(self.languages) or "unknown",
            "include data": str(self.settings.include_data),
            "private": str(self.settings.private),
            "eval.json": eval_digest(self.run_dir),
            "ftw templates": stage.file_digest(TEMPLATES_DIR / card.CARD_TEMPLATE),
        }
        for quant, path in self.ggufs.items():
            values[f"GGUF {quant}"] = stage.recorded_digest(self.run_dir, artifacts.gguf(quant)) or stage.file_digest(
                path
            )
        if self.adapter:
            values["adapter GGUF"] = stage.file_digest(self.adapter)
        return stage.StageInputs(self.key, values)

    # ---- making it -----------------------------------------------------------------------

    def make(self, partial: Path) -> None:
        partial.mkdir()
        text = self.modelfile.read_text(encoding="utf-8")
        files = OllamaFiles.read(text, str(self.modelfile))
        for quant, path in self.ggufs.items():
            link(path, partial / self.gguf_name(quant))
        write_text_exact(partial / TEMPLATE_FILE, files.template)  # no newline: it would be sent
        if files.system:
            write_text_exact(partial / SYSTEM_FILE, files.system)
        write_text_exact(partial / PARAMS_FILE, files.params_json())
        modelfile = repo_modelfile(
            text, files, self.gguf_name(self.default_quant), self.settings.repo_id, self.plan.run
        )
        write_text_exact(partial / MODELFILE, modelfile)
        if self.adapter:
            (partial / ADAPTER_FILE).parent.mkdir()
            link(self.adapter, partial / ADAPTER_FILE)
        data_files = self.copy_data(partial) if self.settings.include_data else []
        write_text_exact(partial / README, self.card_text(partial, files, data_files))

    def copy_data(self, partial: Path) -> list[str]:
        """The training files, copied (they are small beside a GGUF, and may live outside the run)."""
        (partial / DATA_DIR).mkdir()
        for source, name in data_names(self.plan.datasets):
            shutil.copyfile(source, partial / name)
        return [name for _, name in data_names(self.plan.datasets)]

    def card_text(self, partial: Path, files: OllamaFiles, data_files: list[str]) -> str:
        def size(name: str) -> str:
            return human_size((partial / name).stat().st_size)

        return card.render_card(
            run=self.plan.run,
            repo_id=self.settings.repo_id,
            plan=self.plan,
            base=self.base,
            license_line=card.license_line(self.base),
            languages=self.languages,
            facts=card.training_facts(self.run_dir, self.plan, self.languages),
            versions=manifest.load(self.run_dir).get("versions", {}),
            ggufs=[
                {"quant": quant, "name": self.gguf_name(quant), "size": size(self.gguf_name(quant))}
                for quant in self.quants
            ],
            default_quant=self.default_quant,
            modelfile_gguf=self.gguf_name(self.default_quant),
            sizes={name: size(name) for name in (TEMPLATE_FILE, PARAMS_FILE, MODELFILE)}
            | ({SYSTEM_FILE: size(SYSTEM_FILE)} if files.system else {}),
            system=files.system,
            stops=files.stops,
            adapter={"name": ADAPTER_FILE, "size": size(ADAPTER_FILE)} if self.adapter else None,
            include_data=self.settings.include_data,
            private=self.settings.private,
            data_files=[{"name": name, "size": size(name)} for name in data_files],
            eval=card.eval_table(self.run_dir, self.ggufs[self.default_quant]),
        )

    # ---- checking it ---------------------------------------------------------------------

    def expected_files(self, system: bool) -> set[str]:
        names = {self.gguf_name(quant) for quant in self.quants} | {TEMPLATE_FILE, PARAMS_FILE, MODELFILE, README}
        if system:
            names.add(SYSTEM_FILE)
        if self.adapter:
            names.add(ADAPTER_FILE)
        if self.settings.include_data:
            names |= {name for _, name in data_names(self.plan.datasets)}
        return names

    def verify(self, partial: Path) -> str:
        source = OllamaFiles.read(self.modelfile.read_text(encoding="utf-8"), str(self.modelfile))
        found = staged_files(partial)
        expected = self.expected_files(bool(source.system))
        if set(found) != expected:
            raise FtwError(f"the publish folder holds {sorted(found)}, expected {sorted(expected)}")
        for quant, path in self.ggufs.items():
            check_gguf(partial / self.gguf_name(quant), path)
        check_ollama_files(partial, source, self.gguf_name(self.default_quant))
        card.check_card((partial / README).read_text(encoding="utf-8"))
        check_no_token(partial)
        return f"{len(found)} files, {human_size(sum(found.values()))}"


def adapter_gguf(run_dir: Path) -> Path | None:
    """The LoRA adapter as a GGUF (`ftw adapter`, manifest key gguf_lora), when the run has one."""
    path = manifest.load(run_dir)["artifacts"].get(artifacts.GGUF_LORA)
    return Path(path) if path and Path(path).is_file() else None


def eval_digest(run_dir: Path) -> str:
    path = run_dir / EVAL_JSON
    return stage.file_digest(path) if path.is_file() else "none"


def link(source: Path, target: Path) -> None:
    """A relative symbolic link, so that the run folder can move; a copy where links can't be made."""
    try:
        target.symlink_to(relative_or_absolute(source.resolve(), target.parent.resolve()))
    except OSError:
        shutil.copyfile(source, target)


def staged_files(folder: Path) -> dict[str, int]:
    """Every file as upload_folder sees it (links followed): path relative to the folder -> size."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.glob("**/*"))
        if path.is_file()
    }


def check_gguf(staged: Path, source: Path) -> None:
    """The staged name reaches the run's GGUF (verified when `ftw gguf` made it): magic and size."""
    with staged.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC or staged.stat().st_size != source.stat().st_size:
        raise FtwError(f"{staged.name} in the publish folder is not {source}. Build it again: remove {staged.parent}")


def check_ollama_files(folder: Path, source: OllamaFiles, gguf_name: str) -> None:
    """The Hub files and the repository's Modelfile say exactly what the run's verified Modelfile says."""
    staged = OllamaFiles.read((folder / MODELFILE).read_text(encoding="utf-8"), "the published Modelfile")
    if staged.model != f"./{gguf_name}" or {**asdict(staged), "model": ""} != {**asdict(source), "model": ""}:
        raise FtwError("the published Modelfile differs from the run's beyond its FROM line")
    system_file = folder / SYSTEM_FILE
    system = system_file.read_text(encoding="utf-8") if system_file.is_file() else ""
    if (folder / TEMPLATE_FILE).read_text(encoding="utf-8") != source.template or system != source.system:
        raise FtwError("the `template` or `system` file differs from the run's Modelfile")
    params = json.loads((folder / PARAMS_FILE).read_text(encoding="utf-8"))
    unknown = set(params) - set(OLLAMA_PARAMETERS)
    if unknown or params.get("stop", []) != source.stops:
        raise FtwError(f"the `params` file has unknown keys {sorted(unknown)} or other stops than the Modelfile")


def check_no_token(folder: Path) -> None:
    """No Hugging Face token this process can see is in any staged file, byte for byte (a GGUF through
    mmap: seconds for gigabytes from the page cache, which the upload then reads again)."""
    tokens = tuple(token.encode("utf-8") for token in hub.known_tokens())
    if not tokens:
        return
    for name in staged_files(folder):
        path = (folder / name).resolve()
        stat = path.stat()
        if holds_any(path, stat.st_size, stat.st_mtime_ns, tokens):
            raise FtwError(f"{name} in the publish folder contains a Hugging Face token; nothing was uploaded")


@functools.lru_cache(maxsize=64)
def holds_any(path: Path, size: int, mtime_ns: int, needles: tuple[bytes, ...]) -> bool:
    """Does the file (this size and version of it) contain any of the needles? Read once per process."""
    if size == 0:
        return False
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as content:
        return any(content.find(needle) != -1 for needle in needles)


def human_size(size: int) -> str:
    """Sizes as the Hub shows them (powers of 1000)."""
    if size < 1000:
        return f"{size} B"
    for power, unit in enumerate(("KB", "MB", "GB"), 1):
        if size < 1000 ** (power + 1) or unit == "GB":
            return f"{size / 1000**power:.1f} {unit}"
    return f"{size} B"


# ---- the command -----------------------------------------------------------------------


def check_repo_ids(settings: PublishSettings) -> None:
    hub.check_repo_id(settings.repo_id)
    if settings.base_model:
        hub.check_repo_id(settings.base_model, "--base-model")


@dataclass
class Staged:
    """runs/RUN/publish made and checked, ready to upload: the folder and its files (name -> bytes)."""

    folder: Path
    files: dict[str, int]
    publish_stage: PublishStage
    token: str | None  # None for a dry run


def stage_publish(
    run_dir: Path, settings: PublishSettings, dry_run: bool = False, remake_modelfile: Remake | None = None
) -> Staged:
    """Check the repository id and the token (unless dry_run) and stage runs/RUN/publish."""
    check_repo_ids(settings)
    token = None if dry_run else hub.require_token()
    publish_stage = PublishStage(run_dir, settings, remake_modelfile)
    for note in card.base_notes(publish_stage.base, run_dir.name, settings.repo_id):
        step(f"  note: {note}")
    folder = stage.run_atomic(publish_stage)
    check_no_token(folder)  # again: an up-to-date folder was checked against the tokens of its day
    return Staged(folder, staged_files(folder), publish_stage, token)


def upload(run_dir: Path, settings: PublishSettings, staged: Staged) -> str:
    """Upload the staged folder and record where it went; the commit's URL."""
    plan, quants = staged.publish_stage.plan, staged.publish_stage.quants
    message = f"ftw publish: run {plan.run} ({plan.recipe}, {plan.method}), {', '.join(quants)}"
    commit_url = hub.upload(staged.folder, settings.repo_id, settings.private, staged.token, message)
    record_published(run_dir, settings, commit_url)
    return commit_url


def record_published(run_dir: Path, settings: PublishSettings, commit_url: str) -> None:
    """Where the run went, in its manifest (no token: huggingface_hub holds that)."""
    data = manifest.load(run_dir)
    data["published"] = {
        "repo": settings.repo_id,
        "private": settings.private,
        "commit": commit_url,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest.save(run_dir, data)
