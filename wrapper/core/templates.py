"""The Jinja2 templates in templates/ that rendered files (train.yaml, export.yaml,
dataset_info.json, the Modelfile, the model card, the eval report) are written from.
A template named *.html.j2 has its values HTML-escaped; the others are written as they are."""

from __future__ import annotations

from typing import Any

import jinja2
import yaml

from wrapper.core.paths import TEMPLATES_DIR


def yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 30)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def template_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yaml"] = yaml_scalar
    return env
