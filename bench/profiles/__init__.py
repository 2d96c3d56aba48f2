"""Proof on a real GPU: does every GPU profile fit, how fast is it, and is the planner right?

For each (model, profile) cell this script, with nothing downloaded:

1. builds a model with the model's real architecture (recipes/models.yaml) and random bf16
   weights, and its real tokenizer rebuilt from llama.cpp's vocabulary GGUFs (shapes are
   what cost memory and time; the values of the weights don't);
2. renders the shipped recipe (a copy in the cache with model.base swapped for that
   folder, nothing else changed) through the real `ftw render --profile P`, on a fixed,
   seeded synthetic Alpaca dataset whose every row is truncated at the cutoff (2048);
3. trains a fixed number of steps in a child process that first caps PyTorch's allocator
   at the profile's memory (torch.cuda.set_per_process_memory_fraction, budget =
   memory_gb GiB) and then calls LLaMA-Factory's run_exp in-process, which is what
   `llamafactory-cli train train.yaml` does on one GPU;
4. does the same for LLaMA-Factory's own QLoRA example (examples/train_lora/
   qwen3_lora_sft_otfq.yaml) with the same model, data, cutoff, cap and steps: the baseline;
5. records per cell: fits or OOM, peak allocated and reserved memory, tokens/s after a
   warm-up step, MFU (planner.train_flops_per_token over this GPU's dense bf16 peak), the
   planner's peak estimate and its error, whether the render offloaded checkpoints to host
   RAM (`offload_checkpoints`, the train.yaml's use_unsloth_gc) and the planner's host-RAM
   estimate for them (`host_ram_gb`), and writes bench/results/profiles-<gpu>.json (merged
   with cells already there), with the command that made them.

`--kinds max-context` adds, per (model, profile), the planner's longest context: the longest
cutoff_len that `ftw plan --max-context` (plan_report.max_context_report) says fits at
micro-batch 1 with checkpoints offloaded, rendered at that cutoff with use_unsloth_gc and
trained for a few steps (kind max_context: must fit), and again at +10% (kind
max_context_plus10: may not, informational). The 8 GB offload cells are the ftw cells on
rtx3070: there the planner renders both 8B models with use_unsloth_gc.

A fresh process loads an 8B model for every cell, so a GPU run is split into slots of at
most ~9 minutes with `--part K/N` (cells in a fixed order, cut where the estimated times,
preparing the models included, balance). `--list` prints the cells, their estimated seconds
and their parts without a GPU. On an NVIDIA machine, one 10-minute slot per command:
    python -m bench.profiles --kinds ftw example --part 1/4 --time-budget 540
    python -m bench.profiles --kinds ftw example --part 2/4 --time-budget 540
    python -m bench.profiles --kinds ftw example --part 3/4 --time-budget 540
    python -m bench.profiles --kinds ftw example --part 4/4 --time-budget 540
    python -m bench.profiles --kinds max-context --part 1/6 --time-budget 540 --cell-timeout 420
    ... (the same with --part 2/6 to --part 6/6)
Each merges its cells into the same results file; one that stops at --time-budget (exit code 3)
names the cells it left, to run again with --models/--profiles/--kinds. Only the 8 GB offload cells:
    python -m bench.profiles --kinds ftw --profiles rtx3070 --time-budget 540
Exercise the whole plumbing on a CPU (tiny model, short cutoffs, all kinds, results in a temp folder):
    python -m bench.profiles --cpu-smoke
"""
