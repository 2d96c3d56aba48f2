"""The planner held to other projects' published measurements (bench/planner_published.py lists
each case with its source, its conditions, how they map to planner Settings and what doesn't map).
Cases that map are held to ±15%; the rest are shown in bench/README.md for scale, with the reason."""

from __future__ import annotations

import pytest

from wrapper.config import planner
from wrapper.config.models import known_configs
from wrapper.config.planner import ModelShape

from tests.support.bench import bench_script

PUBLISHED = bench_script("planner_published")
HELD = [case for case in PUBLISHED.CASES if case.asserted]


def test_every_case_cites_its_source_and_what_does_not_map():
    for case in PUBLISHED.CASES:
        assert case.source.startswith("https://") and case.conditions and case.unmapped, case.name
    assert {case.source for case in HELD} == {PUBLISHED.UNSLOTH, PUBLISHED.TORCHTUNE, PUBLISHED.LLAMAFACTORY}


@pytest.mark.parametrize("case", HELD, ids=[case.name for case in HELD])
def test_planner_within_tolerance_of_published_figure(case):
    if case.kind == "floor":  # a rule of thumb for the weights: the planner is above it, by less than 15%
        assert 0 <= case.error() <= PUBLISHED.TOLERANCE, (case.planner_gib(), case.published_gib)
    else:
        assert abs(case.error()) <= PUBLISHED.TOLERANCE, (case.planner_gib(), case.published_gib)


def test_offload_is_what_fits_unsloths_8gb_context():
    """Unsloth's 2,972 tokens on 8 GB need the checkpoints off the GPU: kept there, they don't fit."""
    eight = next(case for case in HELD if "8 GB card" in case.name)
    shape = ModelShape.from_config(known_configs()[eight.model])
    kept = planner.Settings(**{**eight.settings.__dict__, "offload_checkpoints": False})
    assert planner.estimate_memory(shape, eight.settings).total <= 8
    assert planner.estimate_memory(shape, kept).total > planner.estimate_memory(shape, eight.settings).total + 0.7


def test_nf4_decoder_weights_are_llamafactorys_half_byte_per_parameter():
    """x/2 GB counts every parameter at 4 bits; bitsandbytes quantizes the decoder's linear layers only."""
    shape = ModelShape.from_config(known_configs()[PUBLISHED.LLAMA31_8B])
    assert abs(planner.NF4_BYTES_PER_PARAM / 0.5 - 1) < 0.04
    settings = planner.Settings("qlora", 1, 1, 512, True, True, True, 8)
    bf16_rest = (shape.params - shape.decoder_linear_params) * 2 / planner.GIB
    decoder = planner.estimate_memory(shape, settings).weights - bf16_rest
    assert decoder == pytest.approx(shape.decoder_linear_params / 2 / planner.GIB, rel=0.04)
