"""Loading profiles: a card's memory class by name, alias, or NAMExN for N GPUs of it (N processes on the CPU)."""

from __future__ import annotations

import re

from wrapper.config.schema import Profile, parse
from wrapper.config.yamldoc import find_named, load_yaml, parse_yaml
from wrapper.core.errors import FtwError
from wrapper.core.paths import PROFILES_DIR
from wrapper.core.platform import NO_SEVERAL_GPUS, several_processes_available

MULTI_GPU = re.compile(r"(?P<base>.+)x(?P<count>[0-9]+)")


def profile_aliases() -> dict[str, str]:
    """alias -> profile name, from each profile's `aliases:`."""
    found = {}
    for path in sorted(PROFILES_DIR.glob("*.yaml")):
        for alias in (parse_yaml(path.read_text(encoding="utf-8")) or {}).get("aliases") or []:
            found[str(alias)] = path.stem
    return found


def shipped_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A profile by name, alias or path; NAMExN (e.g. a100-40x8) is N GPUs of profile NAME, and cpuxN is N
    processes on the CPU (the same launch, with gloo for NCCL: wrapper/config/processes.py)."""
    aliases = profile_aliases()

    def known(candidate: str) -> bool:
        return candidate in aliases or (PROFILES_DIR / f"{candidate}.yaml").is_file()

    gpus, name = 1, name_or_path
    multi = MULTI_GPU.fullmatch(name_or_path)
    if multi and not known(name_or_path) and known(multi["base"]):
        name, gpus = multi["base"], int(multi["count"])
        if gpus < 1:
            raise FtwError(f"profile {name_or_path!r}: the GPU count after 'x' must be at least 1")
        if gpus > 1 and not several_processes_available():
            raise FtwError(f"profile {name_or_path!r}: {NO_SEVERAL_GPUS}. Train on one: --profile {name}")
    name = aliases.get(name, name)
    path = find_named(name, PROFILES_DIR, "profile")
    doc = load_yaml(path)
    profile = parse(Profile, doc.data, doc)
    profile.name = path.stem if gpus == 1 else f"{path.stem}x{gpus}"
    profile.doc, profile.gpus = doc, gpus
    return profile
