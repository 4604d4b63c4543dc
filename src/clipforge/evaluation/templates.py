"""Prompt templates and class-name files for zero-shot classification."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

from clipforge.errors import ClipforgeError


def template_sets() -> dict[str, list[str]]:
    """Named template sets: CLIP_benchmark's English sets (``imagenet1k`` = the CLIP paper's 80) and ours."""
    d = json.loads((resources.files("clipforge") / "assets" / "templates.json").read_text())
    return {k: v for k, v in d.items() if not k.startswith("_")}


def get_templates(name_or_path: str) -> list[str]:
    """A named set, a text file (one template per line), or a JSON list."""
    sets = template_sets()
    if name_or_path in sets:
        return sets[name_or_path]
    p = Path(name_or_path)
    if p.is_file():
        if p.suffix == ".json":
            data = json.loads(p.read_text())
            if isinstance(data, list) and all(isinstance(t, str) for t in data):
                return data
            raise ClipforgeError(f"{p}: expected a JSON list of template strings")
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if "{" in name_or_path:
        return [name_or_path]
    raise ClipforgeError(f"unknown template set {name_or_path!r}; known: {', '.join(sorted(sets))} "
                         "(or a file, or a template containing {c})")


def load_classnames(spec: str) -> tuple[list[str], list[list[str]] | None]:
    """Class names, and optionally per-class prompts.

    Accepts a comma-separated list (``"cat,dog"``), a ``.txt`` file (one class per line), a
    ``.json`` list of names or ``{class: [prompts...]}`` mapping, or a ``.csv`` with a ``name`` column
    (and an optional ``prompts`` column, prompts separated by ``|``).
    """
    p = Path(spec)
    if not p.is_file():
        if p.suffix.lower() in (".txt", ".json", ".csv"):
            raise ClipforgeError(f"{spec}: class-name file not found")
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise ClipforgeError("no class names given")
        return names, None
    suffix = p.suffix.lower()
    if suffix == ".txt":
        return [line.strip() for line in p.read_text().splitlines() if line.strip()], None
    if suffix == ".json":
        data = json.loads(p.read_text())
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return data, None
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            return list(data), [list(v) for v in data.values()]
        raise ClipforgeError(f"{p}: expected a JSON list of class names or a mapping class -> list of prompts")
    if suffix == ".csv":
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "name" not in rows[0]:
            raise ClipforgeError(f"{p}: expected a CSV with a 'name' column (and optionally 'prompts')")
        names = [r["name"].strip() for r in rows]
        if "prompts" in rows[0]:
            return names, [[x.strip() for x in r["prompts"].split("|") if x.strip()] for r in rows]
        return names, None
    raise ClipforgeError(f"{p}: unknown class-name file format {suffix or '(none)'}; use .txt (one per line), "
                         ".json (list or class -> prompts) or .csv (name[,prompts])")
