"""Windows-readiness, held from Linux CI (issue #27): what cannot run on Windows is never chosen there.

The Windows branches are tested here with `sys.platform` set to "win32"; that they work on a real Windows
machine is not claimed (README.md, "Windows").
"""

from __future__ import annotations

import sys

import pytest

from wrapper.config import planner
from wrapper.config.profiles import load_profile
from wrapper.config.recipes import load_recipe
from wrapper.core.errors import FtwError
from wrapper.core.platform import NO_LIGER
from wrapper.train.render import tuned_args


@pytest.fixture
def windows(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")


def test_a_liger_profile_plans_without_liger_on_windows(windows):
    args, origins = tuned_args(load_recipe("qwen3-8b"), load_profile("rtx4070"))
    assert args["enable_liger_kernel"] is False and origins["enable_liger_kernel"] == NO_LIGER
    assert planner.settings_from_args(args, "qlora", 1).liger is False


def test_a_liger_profile_keeps_liger_on_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    args, origins = tuned_args(load_recipe("qwen3-8b"), load_profile("rtx4070"))
    assert args["enable_liger_kernel"] is True and "rtx4070.yaml" in origins["enable_liger_kernel"]


@pytest.mark.parametrize("name", ["rtx4090x2", "cpux2"])
def test_several_gpus_or_processes_are_refused_on_windows_with_the_single_profile_to_use(windows, name):
    with pytest.raises(FtwError, match=rf"Linux only.*--profile {name[:-2]}$"):
        load_profile(name)


def test_one_gpu_of_a_profile_loads_on_windows(windows):
    assert load_profile("rtx4090").gpus == 1
