"""MkDocs hooks: pages generated from the code, so that they cannot drift from it.

``<!-- cli-reference -->`` becomes every command's ``--help``, from the argument parsers;
``<!-- workloads -->`` becomes the table of built-in workloads, from their descriptions.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

os.environ.setdefault("COLUMNS", "100")  # argparse wraps help text to the terminal's width


def _cli_reference() -> str:
    from fulcrum.cli import build_parser

    parser = build_parser()
    parts = ["```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        parts += [f"## `fulcrum {name}`", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def _workloads() -> str:
    from fulcrum.workloads import describe

    rows = ["| name | what it is |", "| --- | --- |"]
    rows += [f"| `{name}` | {text} |" for name, text in describe().items()]
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", _cli_reference())
    if "<!-- workloads -->" in markdown:
        markdown = markdown.replace("<!-- workloads -->", _workloads())
    return markdown
