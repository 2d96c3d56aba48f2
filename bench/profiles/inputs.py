"""What a cell trains on: the seeded synthetic dataset at a cutoff, and the shipped recipe copied with
model.base swapped for the random-weight model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from wrapper.config.models import known_configs
from wrapper.config.yamldoc import parse_yaml
from wrapper.core.fsutil import write_text_atomic
from wrapper.core.paths import RECIPES_DIR

from .settings import SMOKE_SHAPE
from tests.support.runner import REPO

WORDS = [
    "the",
    "model",
    "answer",
    "question",
    "river",
    "city",
    "winter",
    "summer",
    "number",
    "letter",
    "table",
    "window",
    "garden",
    "music",
    "market",
    "reason",
    "system",
    "memory",
    "training",
    "data",
    "token",
    "layer",
    "weight",
    "value",
    "result",
    "method",
    "paper",
    "report",
    "station",
    "bridge",
    "mountain",
    "forest",
    "ocean",
    "island",
    "village",
    "teacher",
    "student",
    "doctor",
    "engineer",
    "farmer",
    "yellow",
    "green",
    "violet",
    "silver",
    "quickly",
    "slowly",
    "carefully",
    "never",
    "always",
    "often",
    "because",
    "although",
    "while",
    "before",
    "after",
    "during",
    "between",
    "under",
    "over",
    "through",
    "against",
    "among",
    "within",
    "without",
    "around",
    "ответ",
    "вопрос",
    "город",
    "река",
    "зима",
    "лето",
    "число",
    "письмо",
    "окно",
    "сад",
    "музыка",
    "рынок",
    "причина",
    "система",
    "память",
    "данные",
    "слой",
    "вес",
    "значение",
    "результат",
    "метод",
    "отчёт",
    "станция",
    "мост",
    "гора",
    "лес",
    "океан",
    "остров",
    "деревня",
    "учитель",
    "студент",
    "врач",
    "инженер",
    "быстро",
    "медленно",
    "всегда",
    "никогда",
    "потому",
    "хотя",
    "перед",
    "после",
]  # noqa: E501


def write_dataset(folder: Path, cutoff: int, rows: int, seed: int = 0) -> tuple[Path, str]:
    """Seeded Alpaca rows whose instruction is at least `cutoff` tokens (every word is one token or
    more) and whose output is short (cutoff/16 English words, a token or two each): LLaMA-Factory
    keeps a target shorter than half the cutoff whole and cuts the source, so every row is exactly
    cutoff tokens and every answer keeps its end-of-turn token (render's will-it-stop check refuses
    a cutoff that cuts the answers)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"bench_synthetic_v2_c{cutoff}_r{rows}_s{seed}"
    path = folder / f"{name}.json"
    if not path.is_file():
        rng = random.Random(seed)
        english = WORDS[: WORDS.index("around") + 1]

        def text(words: int, vocabulary: list[str] = WORDS) -> str:
            return " ".join(rng.choice(vocabulary) for _ in range(words))

        records = [
            {"instruction": text(cutoff), "input": "", "output": text(max(4, cutoff // 16), english)}
            for _ in range(rows)
        ]
        write_text_atomic(path, json.dumps(records, ensure_ascii=False) + "\n")
    info = folder / "dataset_info.json"
    entries = json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
    entries[name] = {"file_name": path.name}
    info.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return path, name


def shipped_recipe_for(hub_id: str) -> Path:
    found = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        if path.name == "models.yaml":
            continue
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
        if isinstance(data.get("model"), dict) and data["model"].get("base") == hub_id:
            found.append(path)
    if not found:
        raise SystemExit(f"no shipped recipe in recipes/ has model.base {hub_id}")
    return found[0]


def write_recipe_copy(shipped: Path, model_dir: Path, folder: Path) -> Path:
    """The shipped recipe with model.base swapped for the random-weight folder; nothing else changes."""
    data = parse_yaml(shipped.read_text(encoding="utf-8"))
    data["model"]["base"] = str(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / shipped.name  # same file name: same recipe name in the run
    header = (
        f"# Copy of {shipped.relative_to(REPO)} made by bench/profiles: model.base is a local\n"
        f"# random-weight model with the real architecture; every other value is the shipped one.\n"
    )
    write_text_atomic(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def model_config_for(hub_id: str, smoke: bool) -> dict:
    configs = known_configs()
    if hub_id not in configs:
        raise SystemExit(f"{hub_id} is not in recipes/models.yaml; known: {', '.join(configs)}")
    config = dict(configs[hub_id])
    if smoke:
        config.update(SMOKE_SHAPE, max_position_embeddings=4096)
    return config
