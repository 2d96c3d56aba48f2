"""The artifacts of a run, declared once: their manifest keys, what makes each, and what each is made from.

Every stage records its artifact under one of these keys (never a string spelled elsewhere), and
the graph of `needs` is what makes an artifact stale: when an artifact is made again, every
artifact that needs it, directly or through another, is dropped from the manifest until it is
made again too (`manifest.forget_from`). `ftw status` reads its titles and commands here.

    adapter ──> merged ──> gguf_f16, gguf_imatrix ──> gguf_q4_k_m, gguf_q8_0, ... ──> modelfile ──> publish
       │                                                         └──> eval
       └──> gguf_lora ──> modelfile_adapter
    (the base model) ──> gguf_base_q4_k_m, gguf_vocab, gguf_lora_base

`cheap` marks what takes seconds to remake from its inputs (a Modelfile): a command that needs it
current remakes it. Training and export are never started by another command; the message names
the command instead.
"""

from __future__ import annotations

from dataclasses import dataclass

ADAPTER = "adapter"
MERGED = "merged"
GGUF_LORA = "gguf_lora"
GGUF_VOCAB = "gguf_vocab"
GGUF_LORA_BASE = "gguf_lora_base"
MODELFILE = "modelfile"
MODELFILE_ADAPTER = "modelfile_adapter"
PUBLISH = "publish"
EVAL = "eval"
# Logs are recorded beside the artifact their stage makes; nothing is made from them.
TRAIN_LOG = "train_log"
EXPORT_LOG = "export_log"
GGUF_LOG = "gguf_log"

GGUF_PREFIX = "gguf_"
BASE_GGUF_PREFIX = "gguf_base_"
UNQUANTIZED = ("f16", "bf16", "f32")


def gguf(kind: str) -> str:
    """The key of a run's GGUF of this kind ('f16', 'Q4_K_M' -> gguf_q4_k_m)."""
    return f"{GGUF_PREFIX}{kind.lower()}"


IMATRIX = gguf("imatrix")


def base_gguf(quant: str) -> str:
    """The key of the base model's GGUF that the LoRA adapter runs on."""
    return f"{BASE_GGUF_PREFIX}{quant.lower()}"


@dataclass(frozen=True)
class Artifact:
    key: str
    title: str  # how messages and `ftw status` name it
    command: str  # the command that makes it, without --run
    needs: tuple[str, ...] = ()  # keys of what it is made from, inside the run
    cheap: bool = False  # seconds to remake: a command that needs it current remakes it

    def command_for(self, run: str) -> str:
        """The command for this run: `ftw gguf --adapter` -> `ftw gguf --run R --adapter`."""
        words = self.command.split()
        at = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
        return " ".join([*words[:at], "--run", run, *words[at:]])


FIXED = {
    artifact.key: artifact
    for artifact in (
        Artifact(ADAPTER, "adapter (LoRA)", "ftw train"),
        Artifact(MERGED, "merged model", "ftw export", needs=(ADAPTER,)),
        Artifact(IMATRIX, "importance matrix", "ftw gguf --imatrix", needs=(MERGED,)),
        Artifact(GGUF_LORA, "LoRA as a GGUF adapter", "ftw adapter", needs=(ADAPTER,)),
        Artifact(GGUF_VOCAB, "base vocabulary GGUF", "ftw adapter"),
        Artifact(GGUF_LORA_BASE, "base GGUF the adapter runs on", "ftw adapter"),
        Artifact(MODELFILE, "Ollama Modelfile", "ftw modelfile", needs=(GGUF_PREFIX,), cheap=True),
        Artifact(MODELFILE_ADAPTER, "Ollama Modelfile.adapter", "ftw adapter", needs=(GGUF_LORA,)),
        Artifact(PUBLISH, "folder for the Hub", "ftw publish --repo USER/NAME --dry-run", needs=(MODELFILE,)),
        Artifact(EVAL, "evaluation (eval.json)", "ftw eval", needs=(GGUF_PREFIX,)),
        Artifact(TRAIN_LOG, "training log", "ftw train"),
        Artifact(EXPORT_LOG, "export log", "ftw export"),
        Artifact(GGUF_LOG, "conversion log", "ftw gguf"),
    )
}


def declared(key: str) -> Artifact:
    """The declaration of any key a run records, the per-quant GGUF keys included."""
    if key in FIXED:
        return FIXED[key]
    if key.startswith(BASE_GGUF_PREFIX):
        quant = key.removeprefix(BASE_GGUF_PREFIX).upper()
        return Artifact(key, f"base {quant} GGUF (for the adapter)", "ftw adapter")
    if key.startswith(GGUF_PREFIX):
        kind = key.removeprefix(GGUF_PREFIX)
        if kind in UNQUANTIZED:
            return Artifact(key, f"{kind} GGUF", "ftw gguf --keep-intermediates", needs=(MERGED,))
        # made from the unquantized GGUF, which `ftw gguf` removes afterwards: the merge is what lasts
        return Artifact(key, f"{kind.upper()} GGUF", f"ftw gguf --quant {kind.upper()}", needs=(MERGED,))
    raise KeyError(f"no artifact is declared under the key {key!r} (wrapper/core/artifacts.py)")


def depends_on(key: str, made_again: str) -> bool:
    """Is `key` made, directly or through others, from `made_again`? GGUF_PREFIX among the needs
    stands for the run's quantized GGUFs, all made from its merge."""
    if key == made_again:
        return True
    try:
        declaration = declared(key)
    except KeyError:  # a key an older ftw recorded: made from nothing this one knows
        return False
    needs = (MERGED if need == GGUF_PREFIX else need for need in declaration.needs)
    return any(depends_on(need, made_again) for need in needs)
