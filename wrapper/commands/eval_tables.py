"""The evaluation's tables in the terminal: the same tables report.md and report.html show
(wrapper/eval/tables.py), each with the columns a person compares and the lines said under it."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table as RichTable

from wrapper.core.ui import console
from wrapper.eval.tables import Report, Table


def print_table(table: Table) -> None:
    if table.rows:
        shown = [table.header.index(name) for name in table.brief] if table.brief else range(len(table.header))
        grid = RichTable(title=table.title)
        for index in shown:
            grid.add_column(escape(table.header[index]), justify="left" if index < table.labels else "right")
        for number, row in enumerate(table.rows):
            if table.grouped and number and row[0]:
                grid.add_section()
            grid.add_row(*(escape(row[index]) for index in shown))
        console.print(grid)
    elif table.notes:
        console.print(f"[bold]{escape(table.title)}[/bold]")
    for line in table.warnings:
        console.print(f"[yellow]{escape(line)}[/yellow]", soft_wrap=True)
    for line in table.notes:
        console.print(f"  {escape(line)}", soft_wrap=True)


def print_report(report: Report) -> None:
    """The report's tables and what is said under them; the answers stay in the files."""
    console.print(f"[bold]{escape(report.title)}[/bold]")
    for table in report.tables:
        print_table(table)
