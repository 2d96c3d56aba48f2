"""Will it stop? Render's check that training teaches the model to end its answers.

A fine-tune stops because it learned to emit its template's end-of-turn token after every
answer (<|im_end|> for ChatML, <|eot_id|> for Llama 3). It never learns that when the token
is not among what LLaMA-Factory trains on: a template that writes none, a cutoff_len that
cuts the answer before it, a label of -100 (IGNORE_INDEX) on it, or a stop word the base
vocabulary doesn't have (LLaMA-Factory adds it as a new token whose embedding nothing
trains). Each is found only after training, as a model that "never stops"; here one
sample row is encoded the way LLaMA-Factory encodes it for sft (its
SupervisedDatasetProcessor, the run's template, cutoff_len and masking options, the base
model's tokenizer) before render writes anything.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path

from wrapper.core.errors import FtwError
from wrapper.core.paths import display_path
from wrapper.core.plan import RunPlan
from wrapper.data.formats import ANSWER_ROLES, PROMPT_ROLES, SFT_FORMATS, Row, parse_row
from wrapper.data.readers import Problem, read_json_records
from wrapper.data.tokens import LF_ROLES, tokenizer_dir
from wrapper.prompts.training_format import TrainingFormat, training_format

# The sample is the shortest of a file's first rows: a row longer than cutoff_len is a data
# matter (ftw data check); a cutoff that cuts even the shortest answer is the run's.
SAMPLE_ROWS = 50
IGNORE_INDEX = -100  # LLaMA-Factory's label for "not trained" (llamafactory.extras.constants)
# DataArguments that change how a row is encoded for sft.
ENCODING_KEYS = ("cutoff_len", "train_on_prompt", "mask_history", "enable_thinking", "preserve_thinking")


@dataclass
class Sample:
    row: Row
    where: str  # file:line


@dataclass
class Encoded:
    """A row as LLaMA-Factory encodes it for sft, and where its last answer starts."""

    input_ids: list[int]
    labels: list[int]
    answer_start: int
    answer_cut: bool  # cutoff_len cut the last answer short
    needed: int  # the row's tokens without a cutoff


def check_end_of_turn(plan: RunPlan) -> None:
    """Record in the plan the end-of-turn token a sample answer ends with and trains on; raise
    when there is none or it isn't trained; where the tokenizer isn't here, note the skip."""
    if plan.train_args.get("stage", "sft") != "sft":
        return  # pre-training and preference stages have no answer turns of this shape
    sample = sample_row(plan)
    if sample is None:
        return
    try:
        folder = tokenizer_dir(plan.base_model)
    except OSError as exc:  # a hub model not downloaded yet: the check runs once its tokenizer is here
        fix = (
            str(exc) if Path(plan.base_model).is_absolute() else f"hf download {plan.base_model} --include 'tokenizer*'"
        )
        plan.skipped_checks.append(
            f"will it stop: the end-of-turn check needs the tokenizer of {plan.base_model}, not on this machine ({fix})"
        )
        return
    fmt = _training_format(str(folder), plan.template, plan.train_args.get("default_system"))
    try:
        encoded = encode_row(fmt, sample.row, plan.train_args)
    except ValueError as exc:  # e.g. a multimodal template that needs the model's processor
        plan.skipped_checks.append(f"will it stop: LLaMA-Factory can't encode {sample.where} here ({exc})")
        return
    plan.end_of_turn = end_of_turn(encoded, fmt, plan, sample.where)


@functools.lru_cache(maxsize=8)
def _training_format(folder: str, template: str, system: str | None) -> TrainingFormat:
    """Loading a tokenizer is render's slowest step after LLaMA-Factory's import: once per process."""
    return training_format(folder, template, system)


def sample_row(plan: RunPlan) -> Sample | None:
    """The shortest of the first rows of the first training file (rows without tools preferred)."""
    train = set(str(plan.train_args.get("dataset", "")).split(","))
    for dataset in plan.datasets:
        if dataset["name"] not in train or dataset["format"] not in SFT_FORMATS:
            continue
        path = Path(dataset["path"])
        rows = []
        for record in read_json_records(path):
            if len(rows) >= SAMPLE_ROWS:
                break
            try:
                rows.append(Sample(parse_row(record.value, dataset["format"]), f"{display_path(path)}:{record.line}"))
            except Problem:
                continue  # render already refused files with bad rows; prepared files have none
        if rows:
            return min(rows, key=lambda s: (bool(s.row.tools), sum(len(p) for p in s.row.pieces)))
    return None


def _messages(row: Row) -> list[dict]:
    if not row.turns or row.turns[-1][0] not in ANSWER_ROLES or row.turns[0][0] not in PROMPT_ROLES:
        raise ValueError("the row is not prompt/answer turns")
    return [{"role": LF_ROLES[role], "content": content} for role, content in row.turns]


def encode_row(fmt: TrainingFormat, row: Row, train_args: dict) -> Encoded:
    """LLaMA-Factory's own sft encoding of `row` with the run's settings (its default system is `fmt`'s)."""
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor
    from llamafactory.hparams import DataArguments

    data_args = DataArguments(
        template=train_args.get("template"), **{key: train_args[key] for key in ENCODING_KEYS if key in train_args}
    )
    # get_template_and_fix_tokenizer sets these on the template; set them on a copy of the format's.
    template = copy.copy(fmt.template)
    template.enable_thinking, template.preserve_thinking = data_args.enable_thinking, data_args.preserve_thinking
    messages = _messages(row)
    processor = SupervisedDatasetProcessor(
        template=template, tokenizer=fmt.tokenizer, processor=None, data_args=data_args
    )
    # One row through the processor's batch entry point, as LLaMA-Factory's dataset.map calls it.
    batch = processor.preprocess_dataset(
        {
            "_prompt": [messages[:-1]],
            "_response": [messages[-1:]],
            "_system": [row.system or ""],
            "_tools": [row.tools or ""],
            **{key: [None] for key in ("_images", "_videos", "_audios")},
        }
    )
    if not batch["input_ids"]:
        raise ValueError("LLaMA-Factory drops the row as not prompt/answer turns")
    input_ids, labels = batch["input_ids"][0], batch["labels"][0]
    discard_history_cot = data_args.mask_history and not template.preserve_thinking
    pairs = template.encode_multiturn(fmt.tokenizer, messages, row.system, row.tools, discard_history_cot)
    tail = 1 if template.efficient_eos else 0  # the eos such templates append after the last answer
    answer = pairs[-1][1]
    start = _answer_start(input_ids, answer, tail)
    return Encoded(
        input_ids=input_ids,
        labels=labels,
        answer_start=start,
        answer_cut=len(input_ids) - tail - start < len(answer),
        needed=sum(len(source) + len(target) for source, target in pairs) + tail,
    )


def _answer_start(input_ids: list[int], answer: list[int], tail: int) -> int:
    """Where the last answer (maybe cut short by cutoff_len) starts: LLaMA-Factory always puts
    the last turn last, even with mask_history, and cuts an answer from its end."""
    end = len(input_ids) - tail
    for kept in range(min(len(answer), end), 0, -1):
        if input_ids[end - kept : end] == answer[:kept]:
            return end - kept
    return end


def end_of_turn(encoded: Encoded, fmt: TrainingFormat, plan: RunPlan, where: str) -> dict:
    """The end-of-turn token of the last answer and its label, or an FtwError saying what is wrong."""
    tokenizer, template = fmt.tokenizer, fmt.template
    stop_ids = {i for i in template.get_stop_token_ids(tokenizer) if i is not None}
    ids, labels = encoded.input_ids, encoded.labels
    at = next((p for p in range(encoded.answer_start, len(ids)) if ids[p] in stop_ids), None)
    if at is None:
        raise _missing(encoded, fmt, plan, where, stop_ids)
    token_id, token = ids[at], tokenizer.convert_ids_to_tokens(ids[at])
    if labels[at] != token_id:
        raise _not_trained(token, token_id, labels[at], fmt, plan, where)
    if fmt.base_vocab_size is not None and token_id >= fmt.base_vocab_size and not _trains_new_tokens(plan):
        raise _new_token(token, token_id, plan)
    return {"token": token, "id": token_id, "label": labels[at], "row": where}


def _trains_new_tokens(plan: RunPlan) -> bool:
    # resize_vocab makes LLaMA-Factory train the embeddings (and add_special_tokens turns it on).
    return bool(plan.train_args.get("resize_vocab") or plan.train_args.get("add_special_tokens"))


def render_command(plan: RunPlan, *extra: str, drop: tuple[str, ...] = ()) -> str:
    """The render command again, its --set values kept, except those `extra` replaces or `drop` names."""

    def key(value: str) -> str:
        return value.partition("=")[0].removeprefix("train.")

    replaced = {key(value) for value in extra} | set(drop)
    sets = [value for value in plan.overrides if key(value) not in replaced] + list(extra)
    return f"ftw render --recipe {plan.recipe} --profile {plan.profile} --run {plan.run}" + "".join(
        f" --set {value}" for value in sets
    )


def _names(tokenizer, ids: set[int]) -> str:
    return ", ".join(f"{tokenizer.convert_ids_to_tokens(i)} (id {i})" for i in sorted(ids))


def _missing(encoded: Encoded, fmt: TrainingFormat, plan: RunPlan, where: str, stop_ids: set[int]) -> FtwError:
    tokenizer = fmt.tokenizer
    stops = _names(tokenizer, stop_ids)
    if encoded.answer_cut:
        cutoff = plan.train_args.get("cutoff_len")
        enough = -(-encoded.needed // 64) * 64  # the row's length, rounded up to a multiple of 64
        return FtwError(
            f"will it stop: cutoff_len {cutoff} cuts the answer of {where} (the shortest of its file's first "
            f"rows: {encoded.needed} tokens) before its end-of-turn token ({stops}), so training never shows "
            f"the model where an answer ends and it will not stop. Raise cutoff_len above the rows' length: "
            f"{render_command(plan, f'cutoff_len={enough}')}"
        )
    ending = tokenizer.decode(encoded.input_ids[encoded.answer_start :])[-40:]
    return FtwError(
        f"will it stop: LLaMA-Factory's '{plan.template}' template ends the answer of {where} without an "
        f"end-of-turn token: the answer ends {ending!r}, with none of the stop tokens ({stops}), so the model "
        f"never learns to stop and answers until max_tokens. Set model.template (in {plan.recipe_file}) to the "
        f"template of {plan.base_model}'s family, the one its chat template writes, then: "
        f"{render_command(plan, drop=('model.template',))}"
    )


def _not_trained(token: str, token_id: int, label: int, fmt: TrainingFormat, plan: RunPlan, where: str) -> FtwError:
    why = (
        "The tokenizer's pad token is that same token (pad == eos), and masking the padding by its id masks "
        f"the end of every answer too: give the tokenizer of {plan.base_model} a pad token of its own "
        "(pad_token in its tokenizer_config.json). "
        if fmt.tokenizer.pad_token_id == token_id
        else f"Check train_on_prompt and mask_history in {plan.recipe_file}. "
    )
    return FtwError(
        f"will it stop: the end-of-turn token {token} (id {token_id}) of the answer of {where} has label "
        f"{label}{' (IGNORE_INDEX: not trained)' if label == IGNORE_INDEX else ''}, so training never teaches "
        f"the model to emit it and it will not stop. {why}Then: {render_command(plan)}"
    )


def _new_token(token: str, token_id: int, plan: RunPlan) -> FtwError:
    return FtwError(
        f"will it stop: LLaMA-Factory's '{plan.template}' template ends answers with {token}, which the "
        f"tokenizer of {plan.base_model} doesn't have: LLaMA-Factory adds it as a new token (id {token_id}) "
        f"with an embedding nothing trains unless resize_vocab is on, so the model can't learn to emit it and "
        f"will not stop. The template is probably not this model's: set model.template (in {plan.recipe_file}) "
        f"to the template of {plan.base_model}'s family and render again; or train the new token: "
        f"{render_command(plan, 'resize_vocab=true')}"
    )
