"""GPU profiles, the planner and multi-GPU rendering, all checked on a machine without a GPU."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from test_synth import synth_row, write

from wrapper.config import planner
from wrapper.config.models import known_configs
from wrapper.config.planner import ModelShape, Settings
from wrapper.config.processes import spread_batch
from wrapper.config.profiles import load_profile, shipped_profiles
from wrapper.config.recipes import load_recipe, shipped_recipes
from wrapper.core.errors import FtwError
from wrapper.data.prepare import prepare
from wrapper.train.render import render
from wrapper.train.stage import launch_env

from tests.support.runner import REPO, run_ftw

# Every shipped recipe on every shipped profile, and one multi-GPU name: a new recipe or profile is
# tested by being added (as torchtune tests every config it ships).
RECIPES = shipped_recipes()
PROFILES = [*shipped_profiles(), "rtx4090x2"]
# At cutoff 2048 the 8 GB card takes the Llama-3 8Bs with offloaded checkpoints; Qwen3-8B's bigger
# vocabulary (bf16 embeddings and lm_head, 2.3 GiB) leaves it ~20 MiB over (docs/training.md).
REFUSED_ON_8GB = {"qwen3-8b"}


def test_the_shipped_lists_are_found():
    assert {"demo", "demo-chatlog", "qwen3-8b", "tinyllama-pt"} <= set(RECIPES) and "models" not in RECIPES
    assert {"cpu", "cuda", "rtx3070", "rtx4070", "a100-80"} <= set(PROFILES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_renders_on_every_profile(runs_dir, recipe):
    """Each (recipe, profile) renders and passes LLaMA-Factory's parser, or says clearly that it doesn't
    fit and then renders with --ignore-fit. On this CPU machine GPU profiles are parsed into
    LLaMA-Factory's argument dataclasses with bf16/fp16 off; its machine checks (devices, launcher)
    are the skipped part. A recipe whose data needs `ftw data prepare` (a chat log, synthesized
    rows) is prepared first."""
    run = f"{recipe}-all"
    settings = load_recipe(recipe)
    if not settings.dataset:  # rows from documents: a few, as `ftw data synth` writes them
        rows = [synth_row(str(chunk), number) for chunk in range(5) for number in range(2)]
        write(runs_dir / run / "synth" / "synth.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    if settings.data.field_map.as_dict() or not settings.dataset:
        prepare(recipe, [], run)
    refused = set()
    for profile in PROFILES:
        try:
            plan = render(recipe, profile, run, [], [])
        except FtwError as error:
            assert f"{recipe} does not fit profile {profile}" in str(error)
            refused.add(profile)
            plan = render(recipe, profile, run, [], [], ignore_fit=True)
            assert not plan.fit["fits"]
        train = yaml.safe_load((runs_dir / run / "train.yaml").read_text(encoding="utf-8"))
        if profile == "cpu":
            # Every LLaMA-Factory check runs on the CPU; only "will it stop" waits for a hub model's tokenizer.
            assert [s for s in plan.skipped_checks if not s.startswith("will it stop")] == [] and plan.fit is None
        elif profile == "cuda":  # generic: no memory class, so no plan; still parsed by LLaMA-Factory
            assert plan.fit is None and plan.skipped_checks
        else:
            assert profile in refused or (plan.fit["fits"] and plan.fit["peak_vram_gb"] <= plan.fit["budget_gb"])
            assert any("machine checks" in skipped for skipped in plan.skipped_checks)
            assert train["bf16"] is True
    assert refused == ({"rtx3070"} if recipe in REFUSED_ON_8GB else set())


def test_profile_keeps_the_recipes_effective_batch_and_chooses_qlora_where_needed(runs_dir):
    plan = render("qwen3-8b", "rtx4070", "q", [], [])
    train = plan.train_args
    assert train["per_device_train_batch_size"] * train["gradient_accumulation_steps"] == 8
    assert train["quantization_bit"] == 4 and plan.method == "qlora"
    assert "planner for profile rtx4070" in plan.origins["quantization_bit"]
    assert any("QLoRA" in note for note in plan.fit["notes"])
    big = render("qwen3-8b", "a100-80", "big", [], [])
    assert "quantization_bit" not in big.train_args and big.method == "lora"


def test_pinned_batch_is_respected(runs_dir):
    plan = render("qwen3-4b", "rtx4090", "pin", [], ["per_device_train_batch_size=2"])
    assert plan.train_args["per_device_train_batch_size"] == 2
    assert plan.fit["settings"]["micro_batch"] == 2


def test_unfit_plan_is_refused_unless_ignored(runs_dir):
    with pytest.raises(FtwError, match=r"does not fit profile rtx3070: .*GiB.*--ignore-fit") as refused:
        render("qwen3-8b", "rtx3070", "no", [], [])
    longest = int(re.search(r"longest cutoff_len that fits is (\d+)", str(refused.value))[1])
    assert 1024 < longest < 2048
    assert not (runs_dir / "no").exists()
    plan = render("qwen3-8b", "rtx3070", "forced", [], [], ignore_fit=True)
    assert plan.fit["fits"] is False and (runs_dir / "forced" / "train.yaml").is_file()
    shorter = render("qwen3-8b", "rtx3070", "short", [], [f"cutoff_len={longest}"])
    assert shorter.fit["fits"] and shorter.train_args["use_unsloth_gc"] is True


def test_aliases_and_multi_gpu_names():
    assert load_profile("rtx4080").name == "rtx5080-laptop"
    assert load_profile("h100").name == "a100-80"
    assert load_profile("rtx3090").memory_gb == 24
    eight = load_profile("a100-40x8")
    assert (eight.name, eight.gpus, eight.memory_gb) == ("a100-40x8", 8, 40)
    with pytest.raises(FtwError, match="unknown profile"):
        load_profile("gtx1080")


def test_multi_gpu_renders_zero2_and_launches_through_torchrun(runs_dir):
    from transformers.integrations import HfDeepSpeedConfig

    plan = render("qwen3-8b", "a100-40x8", "ds", [], [])
    run = runs_dir / "ds"
    train = yaml.safe_load((run / "train.yaml").read_text(encoding="utf-8"))
    assert train["deepspeed"] == str(run / "ds_config.json")
    shipped = json.loads((REPO / "templates" / "deepspeed" / "ds_z2_config.json").read_text(encoding="utf-8"))
    config = json.loads((run / "ds_config.json").read_text(encoding="utf-8"))
    assert config == shipped and config["zero_optimization"]["stage"] == 2
    assert not HfDeepSpeedConfig(config).is_zero3()
    # the recipe's effective batch of 8 is kept across 8 GPUs
    assert train["per_device_train_batch_size"] * train["gradient_accumulation_steps"] * 8 == 8
    assert launch_env(plan.gpus) == {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "8"}
    assert launch_env(1) == {}


def test_full_fine_tune_that_needs_sharding_gets_zero3(runs_dir):
    from transformers.integrations import HfDeepSpeedConfig

    plan = render("qwen3-8b", "rtx4090x4", "z3", [], ["method=full"])
    config = json.loads((runs_dir / "z3" / "ds_config.json").read_text(encoding="utf-8"))
    assert plan.fit["settings"]["zero_stage"] == 3
    assert HfDeepSpeedConfig(config).is_zero3()


def test_cpu_processes_keep_the_effective_batch_and_talk_over_gloo(runs_dir):
    """cpuxN: N training processes on the CPU, launched as N GPUs are (tests/test_multi_process.py trains it)."""
    plan = render("demo", "cpux2", "cpu2", [], [])
    train = plan.train_args
    assert (train["per_device_train_batch_size"], train["gradient_accumulation_steps"], plan.gpus) == (2, 1, 2)
    assert train["ddp_backend"] == "gloo" and "profile cpux2: 2 processes" in plan.origins["ddp_backend"]
    env = launch_env(plan.gpus, on_cpu=plan.device == "cpu")
    assert (env["NPROC_PER_NODE"], env["CUDA_VISIBLE_DEVICES"], env["ACCELERATE_TORCH_DEVICE"]) == ("2", "", "cpu")
    pinned = render("demo", "cpux2", "cpu2", [], ["per_device_train_batch_size=4"]).train_args
    assert (pinned["per_device_train_batch_size"], pinned["gradient_accumulation_steps"]) == (4, 1)  # --set wins


def test_generic_cuda_processes_keep_the_effective_batch(runs_dir):
    plan = render("demo", "cudax2", "cuda2", [], [])  # the cuda profile's 1 x 8, over 2 GPUs
    assert (plan.train_args["per_device_train_batch_size"], plan.train_args["gradient_accumulation_steps"]) == (1, 4)
    assert "ddp_backend" not in plan.train_args and plan.fit is None  # NCCL, LLaMA-Factory's default on GPUs


@pytest.mark.parametrize(
    "micro, accum, processes, keep_micro, expected",
    [(4, 1, 2, False, (2, 1)), (1, 8, 2, False, (1, 4)), (4, 1, 3, False, (1, 2)), (4, 1, 2, True, (4, 1))],
)
def test_spread_batch_rounds_as_the_planner_does(micro, accum, processes, keep_micro, expected):
    assert spread_batch(micro, accum, processes, keep_micro) == expected


# A shape small enough to count its parameters by hand.
SMALL_CONFIG = {
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 4,
    "vocab_size": 10,
    "tie_word_embeddings": False,
}


def test_small_shape_by_hand():
    shape = ModelShape.from_config(SMALL_CONFIG)
    # per layer: q 8x8 + k 8x4 + v 8x4 + o 8x8 + gate/up/down 8x16 each = 64+32+32+64+384 = 576
    assert shape.decoder_linear_params == 2 * 576
    assert shape.params == 2 * 576 + 2 * 10 * 8 + 5 * 8  # + embedding and lm_head + 5 norms
    # LoRA r=2 on all seven: 2 * ((8+8)+(8+4)+(8+4)+(8+8)+(8+16)*2+(16+8)) = 256 per layer
    assert shape.lora_params(2) == 512


def test_memory_by_hand():
    shape = ModelShape.from_config(SMALL_CONFIG)
    settings = Settings(
        "lora",
        micro_batch=2,
        grad_accum=1,
        cutoff=4,
        checkpointing=True,
        optimizer_8bit=False,
        liger=False,
        lora_rank=2,
    )
    m = planner.estimate_memory(shape, settings)
    gib = planner.GIB
    assert m.weights * gib == pytest.approx(shape.params * 2)
    assert m.trainable * gib == pytest.approx(512 * 4) and m.gradients * gib == pytest.approx(512 * 4)
    assert m.optimizer * gib == pytest.approx(512 * 8)
    tokens = 8
    layer_set = (8 * 8 + 4 * 4 + 4 * 16) * 2 * tokens
    assert m.activations * gib == pytest.approx(2 * 8 * 2 * tokens + layer_set)
    assert m.logits * gib == pytest.approx(tokens * 10 * 12)  # vocab 10, 12 bytes (bench/loss_memory.py)
    no_ckpt = planner.estimate_memory(shape, Settings(**{**settings.__dict__, "checkpointing": False}))
    assert no_ckpt.activations * gib == pytest.approx(2 * layer_set)


def test_qwen3_8b_size_and_outputs_match_published_figures():
    shape = ModelShape.from_config(known_configs()["Qwen/Qwen3-8B"])
    assert shape.params == pytest.approx(8.19e9, rel=0.002)  # Qwen3-8B: 8.2 B parameters
    merged, gguf = planner.gguf_sizes_gb(shape)
    assert merged == pytest.approx(8.19e9 * 2 / 2**30, rel=0.01)
    assert 4.0 < gguf < 5.0


def test_qlora_weights_are_about_a_quarter_of_bf16_for_the_linear_layers():
    shape = ModelShape.from_config(known_configs()["meta-llama/Llama-3.1-8B-Instruct"])
    base = Settings("lora", 1, 8, 2048, True, True, True, 16)
    lora = planner.estimate_memory(shape, base)
    qlora = planner.estimate_memory(shape, Settings(**{**base.__dict__, "method": "qlora"}))
    embeddings = shape.embedding_params * 2 / planner.GIB
    assert (qlora.weights - embeddings) / (lora.weights - embeddings) == pytest.approx(0.258, abs=0.01)


def test_plan_json_has_the_promised_keys(tmp_path):
    result = run_ftw(tmp_path / "runs", "plan", "--recipe", "qwen3-4b", "--profile", "rtx4070", "--json")
    report = json.loads(result.stdout)
    for key in ("fits", "peak_vram_gb", "budget_gb", "epoch_hours", "merged_gb", "gguf_q4_k_m_gb"):
        assert key in report, key
    assert report["fits"] is True and report["peak_vram_gb"] <= report["budget_gb"]
    assert report["tokens_per_step"] == 8 * 2048
    data = tmp_path / "more.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": "q" * 50, "input": "", "output": "a" * 500}) + "\n" for _ in range(90)),
        encoding="utf-8",
    )
    with_data = json.loads(
        run_ftw(
            tmp_path / "runs", "plan", "--recipe", "qwen3-4b", "--profile", "rtx4070", "--data", str(data), "--json"
        ).stdout
    )
    assert with_data["dataset_rows"] == 90 and with_data["epoch_hours"] > report["epoch_hours"]


def test_plan_that_does_not_fit_exits_nonzero(tmp_path):
    result = run_ftw(tmp_path / "runs", "plan", "--recipe", "qwen3-8b", "--profile", "rtx3070", check=False)
    assert result.returncode == 2 and "does not fit" in result.stderr


def test_auto_profile_on_a_machine_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_ftw(tmp_path / "runs", "render", "--recipe", "demo", "--profile", "auto", "--run", "a")
    assert "auto: no CUDA GPU found -> profile cpu" in result.stdout


def test_planner_matches_committed_gpu_measurements():
    """Once bench/profiles has run on a GPU, its committed cells hold the planner to ±15%."""
    results = sorted((REPO / "bench" / "results").glob("profiles-*.json"))
    if not results:
        pytest.skip("no GPU measurements committed yet (bench/results/profiles-*.json)")
    for path in results:
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["kind"] == "ftw" and cell.get("fits") and cell.get("planner_peak_gb"):
                assert cell["peak_reserved_gb"] == pytest.approx(cell["planner_peak_gb"], rel=0.15), (path.name, cell)


def test_offloaded_checkpoints_only_where_they_make_it_fit(runs_dir):
    """Llama-3.1-8B QLoRA at 2048 fits the 8 GB card only with its checkpoints in host RAM; the 12 GB
    card doesn't need them. Liger and offload together pass LLaMA-Factory's parser."""
    tight = render("llama31-8b", "rtx3070", "tight", [], [])
    train = yaml.safe_load((runs_dir / "tight" / "train.yaml").read_text(encoding="utf-8"))
    assert train["use_unsloth_gc"] is True and train["enable_liger_kernel"] is True
    assert train["quantization_bit"] == 4 and train["cutoff_len"] == 2048 and train["lora_rank"] == 16
    assert "planner for profile rtx3070" in tight.origins["use_unsloth_gc"]
    assert tight.fit["fits"] and tight.fit["host_ram_gb"] == pytest.approx(0.5, abs=0.01)  # 32 x 4096 x 2 B x 2048
    assert any("offloaded checkpointing" in note and "host RAM" in note for note in tight.fit["notes"])
    roomy = render("llama31-8b", "rtx4070", "roomy", [], [])
    assert "use_unsloth_gc" not in roomy.train_args and roomy.fit["host_ram_gb"] == 0
    pinned = render("llama31-8b", "rtx4070", "pinned", [], ["use_unsloth_gc=true"])
    assert pinned.train_args["use_unsloth_gc"] is True and pinned.fit["host_ram_gb"] > 0


def test_offload_moves_the_checkpointed_inputs_by_hand():
    shape = ModelShape.from_config(SMALL_CONFIG)
    kept = Settings("lora", 2, 1, 4, True, False, False, 2)
    offloaded = Settings(**{**kept.__dict__, "offload_checkpoints": True})
    gib = planner.GIB
    inputs = 2 * 8 * 2 * 8  # layers x hidden x 2 bytes x tokens
    saved = planner.estimate_memory(shape, kept).activations - planner.estimate_memory(shape, offloaded).activations
    assert saved * gib == pytest.approx(inputs)
    assert planner.host_ram_gb(shape, offloaded) * gib == pytest.approx(inputs)
    assert planner.host_ram_gb(shape, kept) == 0
    assert planner.offload_seconds_per_token(shape, offloaded) == pytest.approx(2 * 2 * 8 * 2 / 12e9)


def test_longest_cutoff_is_the_edge_of_the_budget():
    shape = ModelShape.from_config(known_configs()["Qwen/Qwen3-8B"])
    profile = planner.profile_facts(load_profile("rtx3070"))
    base = Settings("qlora", 1, 8, 2048, True, True, True, 16)
    for offload in (False, True):
        longest = planner.longest_cutoff(shape, base, profile, offload, cap=40960)
        at = Settings(**{**base.__dict__, "cutoff": longest, "offload_checkpoints": offload})
        beyond = Settings(**{**at.__dict__, "cutoff": longest + 1})
        assert planner.estimate_memory(shape, at).total <= profile.budget_gb
        assert planner.estimate_memory(shape, beyond).total > profile.budget_gb
    assert planner.longest_cutoff(shape, Settings(**{**base.__dict__, "method": "lora"}), profile, True, 40960) == 0


def test_plan_max_context_table_and_json(tmp_path):
    runs = tmp_path / "runs"
    report = json.loads(run_ftw(runs, "plan", "--recipe", "llama31-8b", "--max-context", "--json").stdout)
    rows = {(row["profile"], row["method"]): row for row in report["profiles"]}
    assert {profile for profile, _ in rows} == {p for p in shipped_profiles() if p not in ("cpu", "cuda")}
    eight = rows["rtx3070", "qlora"]
    assert 0 < eight["without_offload"] < 2048 < eight["with_offload"]
    assert rows["rtx3070", "lora"]["with_offload"] == 0  # bf16 weights alone are 15 GiB
    assert rows["a100-80", "qlora"]["with_offload"] == report["model_context"] == 131072  # capped by the model
    one = json.loads(
        run_ftw(runs, "plan", "--recipe", "llama31-8b", "--profile", "rtx3070", "--max-context", "--json").stdout
    )
    assert [row["profile"] for row in one["profiles"]] == ["rtx3070", "rtx3070"]
    table = run_ftw(runs, "plan", "--recipe", "qwen3-8b", "--profile", "rtx3070", "--max-context").stdout
    assert "rtx3070" in table and "doesn't fit" in table


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--recipe", "qwen3-8b", "--profile", "cpu"], "names no GPU memory"),
        (["--recipe", "qwen3-8b", "--profile", "cuda"], "names no GPU memory"),
        (["--recipe", "qwen3-8b", "--set", "method=full"], "--max-context is for LoRA and QLoRA"),
        (["--recipe", "demo-unknown-shape"], "can't plan for"),
    ],
)
def test_plan_max_context_refuses_what_it_cannot_plan(tmp_path, arguments, message):
    if "demo-unknown-shape" in arguments:
        recipe = tmp_path / "demo-unknown-shape.yaml"
        recipe.write_text(
            (REPO / "recipes" / "qwen3-8b.yaml")
            .read_text(encoding="utf-8")
            .replace("Qwen/Qwen3-8B", "someone/unknown-8b"),
            encoding="utf-8",
        )
        arguments = ["--recipe", str(recipe)]
    result = run_ftw(tmp_path / "runs", "plan", *arguments, "--max-context", check=False)
    assert result.returncode == 2 and message in result.stderr, result.stdout + result.stderr


def test_plan_json_keeps_stdout_for_json(tmp_path):
    result = run_ftw(tmp_path / "runs", "plan", "--recipe", "qwen3-8b", "--profile", "rtx3070", "--json", check=False)
    assert result.returncode == 2
    assert json.loads(result.stdout)["fits"] is False  # nothing after the JSON
    assert "does not fit rtx3070" in result.stderr and "--max-context" in result.stderr


def test_train_refuses_when_host_ram_cannot_take_the_offloaded_checkpoints(runs_dir):
    from wrapper.train.stage import available_ram_gib, check_host_ram

    plan = render("llama31-8b", "rtx3070", "ram", [], [])
    check_host_ram(plan, ignore_fit=False)  # 0.5 GiB: this machine has that
    if available_ram_gib() is None:
        pytest.skip("no /proc/meminfo here")
    plan.fit["host_ram_gb"] = 10_000.0
    with pytest.raises(FtwError, match=r"host RAM .*--max-context.*--ignore-fit"):
        check_host_ram(plan, ignore_fit=False)
    check_host_ram(plan, ignore_fit=True)
