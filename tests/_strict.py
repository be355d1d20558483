"""Strict readers for what the project writes: standard JSON (no NaN / Infinity) and Markdown tables."""

import json
from pathlib import Path


def _no_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json(text: str):
    """``json.loads`` that refuses NaN, Infinity and -Infinity (not JSON, RFC 8259)."""
    return json.loads(text, parse_constant=_no_constant)


def check_json_files(folder) -> int:
    """Parse every .json and .jsonl file under `folder` strictly; returns how many were read."""
    n = 0
    for p in sorted(Path(folder).rglob("*")):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix == ".json":
            strict_json(p.read_text())
            n += 1
        elif p.suffix == ".jsonl":
            for line in p.read_text().splitlines():
                if line.strip():
                    strict_json(line)
            n += 1
    return n


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The tables of a Markdown (GFM) document as lists of rows of cell texts, parsed by markdown-it-py."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables, rows, row, cell = [], None, None, None
    for t in tokens:
        if t.type == "table_open":
            rows = []
        elif t.type == "table_close":
            tables.append(rows)
        elif t.type == "tr_open":
            row = []
        elif t.type == "tr_close":
            rows.append(row)
        elif t.type in ("th_open", "td_open"):
            cell = ""
        elif t.type == "inline" and cell is not None:
            cell = t.content
        elif t.type in ("th_close", "td_close"):
            row.append(cell)
            cell = None
    return tables


def reproducible_bytes(path) -> bytes:
    """A dataset file's bytes without what is measured rather than produced: the dataset card's time
    section (``time`` in dataset_card.json, the ``- time per stage`` line of dataset_card.md), which
    differs between runs by nature. Every other file's bytes as they are."""
    path = Path(path)
    data = path.read_bytes()
    if path.name == "dataset_card.json":
        card = json.loads(data)
        assert "time" in card, "the card has no time section"
        del card["time"]
        return json.dumps(card, sort_keys=True).encode()
    if path.name == "dataset_card.md":
        lines = data.decode().splitlines()
        kept = [line for line in lines if not line.startswith("- time per stage")]
        assert len(kept) == len(lines) - 1, "the card has no (or more than one) time line"
        return "\n".join(kept).encode()
    return data
