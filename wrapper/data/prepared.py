"""What `ftw data prepare` left in runs/RUN/data, as `ftw render` reads it: the prepared
files as LLaMA-Factory datasets, and the training keys the prepared data decides."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from wrapper.core.errors import FtwError
from wrapper.core.paths import display_path
from wrapper.data.datasets import FORMATS, DatasetFile

DATA_DIR = "data"
PREPARED = "prepared.json"
TRAIN_NAME, VAL_NAME, PROBES_NAME = "ftw_train", "ftw_val", "ftw_probes"
# LLaMA-Factory's default; a packed sequence is filled from one such batch of consecutive rows
PREPROCESSING_BATCH_SIZE = 1000


@dataclass
class PreparedData:
    run_dir: Path
    info: dict

    @property
    def kind(self) -> str:
        return self.info["kind"]

    @property
    def knowledge(self) -> dict | None:
        """The knowledge split's numbers (rows carry `fact`: data/knowledge.py), else None."""
        return self.info.get("knowledge")

    @property
    def eval_name(self) -> str | None:
        """The dataset LLaMA-Factory's validation loss is computed on: the probes of a knowledge split
        (questions never trained, about facts that were), else the validation split."""
        names = [name for name, _ in self.files if name != TRAIN_NAME]
        return names[0] if names else None

    @property
    def files(self) -> list[tuple[str, DatasetFile]]:
        """(dataset name, file) of train and, when there is one, val or probes."""
        found = []
        for role, name in (("train", TRAIN_NAME), ("val", VAL_NAME), ("probes", PROBES_NAME)):
            entry = self.info["files"].get(role)
            if entry:
                found.append(
                    (
                        name,
                        DatasetFile(
                            Path(entry["path"]),
                            self.info["format"],
                            entry["rows"],
                            entry["sha256"],
                            frozenset(entry["keys"]),
                        ),
                    )
                )
        return found

    def dataset_info(self) -> dict:
        return {name: dataset.dataset_info_entry() for name, dataset in self.files}

    @property
    def origin(self) -> str:
        return f"ftw data prepare ({display_path(self.run_dir / DATA_DIR / PREPARED)})"

    def apply_to_args(self, args: dict, origins: dict, default_origin: str) -> None:
        """Training keys the prepared data decides: stage (pt for raw text), eval_dataset and
        evaluation every save_steps when there is a validation split. The recipe may set the
        evaluation keys itself; it may not contradict the data."""
        stage = "pt" if self.kind == "pt" else "sft"
        if args.get("stage") != stage:
            if origins.get("stage", default_origin) != default_origin:
                raise FtwError(
                    f"{origins['stage']}: stage {args['stage']}, but the run's prepared data "
                    f"({self.run_dir / DATA_DIR}) is {'raw text' if stage == 'pt' else 'conversations'}, "
                    f"trained with stage {stage}"
                )
            args["stage"], origins["stage"] = stage, self.origin
        if stage == "pt" and "packing" not in args:
            # The chunks already fit cutoff_len with their eos: one chunk, one example. Packing
            # (LLaMA-Factory's default for pt) would re-cut them and drop the last partial block.
            args["packing"], origins["packing"] = False, self.origin
        if self.knowledge is not None:
            self._keep_facts_apart(args, origins)
        eval_name = self.eval_name
        if eval_name is None:
            return
        for key in ("eval_dataset", "val_size"):
            if args.get(key):
                raise FtwError(
                    f"{origins[key]}: the prepared data has its own validation split "
                    f"({eval_name}, from `ftw data prepare`); remove '{key}'"
                )
        args["eval_dataset"], origins["eval_dataset"] = eval_name, self.origin
        defaults = {
            "eval_strategy": "steps",
            "eval_steps": args.get("save_steps", 500),
            "per_device_eval_batch_size": args.get("per_device_train_batch_size", 1),
        }
        for key, value in defaults.items():
            if key not in args:
                args[key], origins[key] = value, self.origin

    def _keep_facts_apart(self, args: dict, origins: dict) -> None:
        """With packing, LLaMA-Factory fills each sequence from one preprocessing batch of consecutive rows,
        sorted by length (processor/supervised.py, greedy_knapsack), so the order inside a batch keeps
        nothing apart. The rows of one fact are `spacing` rows apart or more (data/knowledge.py): batches
        no longer than that never put two of them in one sequence, where the model could copy one's answer
        from the other instead of learning it. Without packing each row is its own sequence."""
        if not (args.get("packing") or args.get("neat_packing")):
            return
        if args.get("streaming"):
            raise FtwError(
                f"{origins.get('streaming', 'train.streaming')}: streaming shuffles rows in a buffer before "
                "packing, which would put rows of one fact in one sequence; with prepared facts, remove "
                "'streaming' or turn packing off"
            )
        spacing = self.knowledge.get("spacing")
        if spacing is None or args.get("preprocessing_batch_size", PREPROCESSING_BATCH_SIZE) <= spacing:
            return
        args["preprocessing_batch_size"] = spacing
        origins["preprocessing_batch_size"] = (
            f"{self.origin}: at most {spacing}, the fewest rows between two rows of one fact, so that packing "
            "never puts two of them in one sequence"
        )

    def changed_sources(self) -> list[str]:
        """Sources (and data.replay's file) whose size or modification time differ from when they were prepared."""
        changed = []
        general = self.info.get("replay")
        for source in self.info["sources"] + ([general] if general else []):
            path = Path(source["path"])
            if not path.is_file():
                changed.append(f"{source['path']} (gone)")
                continue
            stat = path.stat()
            if stat.st_size != source["bytes"] or stat.st_mtime_ns != source["mtime_ns"]:
                changed.append(source["path"])
        return changed

    def summary(self) -> dict:
        counts = self.info["counts"]
        return {
            "dir": str(self.run_dir / DATA_DIR),
            "kind": self.kind,
            "prepared_at": self.info["prepared_at"],
            "train": counts["train"],
            "val": counts["val"],
            "probes": counts.get("probes", 0),
            "unseen": counts.get("unseen", 0),
            "rejected": counts["rejected"],
            "read": counts["read"],
            "rejects": self.info["files"]["rejects"],
            "sources": [
                {key: s[key] for key in ("path", "format", "sha256", "read", "kept", "rejected")}
                for s in self.info["sources"]
            ],
            "replay": (  # data.replay's file: an input of train.jsonl as the sources are
                {key: self.info["replay"][key] for key in ("path", "sha256", "drawn", "share")}
                if self.info.get("replay")
                else None
            ),
            "changed_sources": self.changed_sources(),
        }


def load_prepared(run_dir: Path) -> PreparedData | None:
    """The run's prepared data, or None when `ftw data prepare` hasn't made any."""
    path = run_dir / DATA_DIR / PREPARED
    if not path.is_file():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    for entry in info["files"].values():
        file = Path(entry["path"])
        if not file.is_file() or file.stat().st_size != entry["bytes"]:
            raise FtwError(
                f"{file} is missing or changed since `ftw data prepare` wrote it; run it again "
                f"(or delete {run_dir / DATA_DIR} to train on the recipe's files)"
            )
    if info["format"] not in FORMATS:
        raise FtwError(f"{path}: unknown prepared format {info['format']!r}")
    return PreparedData(run_dir, info)
