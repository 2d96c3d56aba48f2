"""report.md and report.html from the report's tables (wrapper/eval/tables.py): Markdown here, HTML from
templates/eval/report.html.j2. The terminal's rendering is the command's (wrapper/commands/eval_tables.py)."""

from __future__ import annotations

import base64

from wrapper.core.templates import template_env
from wrapper.eval.tables import Report, Table

HTML_TEMPLATE = "eval/report.html.j2"


def markdown_table(table: Table) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def markdown_section(table: Table) -> list[str]:
    """## title, the table (when it has rows), the lines under it as a list."""
    lines = [f"## {table.title}", ""]
    if table.rows:
        lines += [markdown_table(table), ""]
    said = table.warnings + table.notes + table.details
    return lines + ([f"- {line}" for line in said] + [""] if said else [])


def markdown(report: Report, plots: list[str], images_dir: str) -> str:
    """report.md; `plots` are the names of the PNGs written to `images_dir` (relative to it)."""
    lines = [f"# {report.title}", "", report.intro, ""]
    for table in report.tables:
        lines += markdown_section(table)
    lines += ["## Plots", ""] + [f"![{name}]({images_dir}/{name}.png)" for name in plots] + [""]
    return "\n".join(lines + markdown_section(report.answers))


def html(report: Report, plots: dict[str, bytes]) -> str:
    """report.html, self-contained: the plots embedded as base64 PNGs."""
    images = [
        {
            "name": name,
            "caption": name.replace("_", " "),
            "src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        }
        for name, png in plots.items()
    ]
    return template_env().get_template(HTML_TEMPLATE).render(report=report, images=images)
