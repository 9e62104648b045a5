"""What ``geomed-ssl methods`` prints and docs/methods.md holds, both rendered from the methods' own declarations
(settings, :class:`~geomed_ssl.views.builder.ViewSpec`, :class:`~geomed_ssl.methods.base.MethodCard`), so they cannot
drift from the code. ``python -m geomed_ssl.methods.catalog > docs/methods.md`` regenerates the file.
"""

from __future__ import annotations

from typing import Any

from geomed_ssl.config import show
from geomed_ssl.methods.registry import METHODS, describe_methods, method_class

HEADER = """# Self-supervised methods

Generated from the methods' own declarations by `geomed-ssl methods --markdown` (a test keeps this file equal to
its output); `geomed-ssl methods` prints the same in plain text. Any recipe switches method with
`--set method.name=NAME`, starting from that method's defaults (the previous method's settings are dropped with a
note). Views are built by one builder from the `data:` crop keys and the `augment:` section
([concepts](concepts.md#views-and-augmentations)); the cost is per optimiser step relative to one
forward-backward of the encoder on one crop; the image vector is what `geomed-ssl embed --pool auto` reads of an
encoder the method trained (the CLS token where the loss reads it, else the mean of the tokens).
"""


VECTOR = {"cls": "CLS token", "mean": "tokens' mean"}  # embed --pool auto, per SSLMethod.embedding_pool


def shipped() -> dict[str, Any]:
    """:func:`describe_methods` of the methods that ship with geomed_ssl (not ones registered by other code)."""
    return {name: d for name, d in describe_methods().items()
            if METHODS[name].__module__.startswith("geomed_ssl.")}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(value: Any) -> str:
    return show(value, limit=40)


def methods_markdown() -> str:
    """docs/methods.md: one table of every method, then each method's settings."""
    methods = shipped()
    lines = [HEADER, "| method | what it learns | views | cost per step | 2D / 3D | known failure modes | image vector "
             "| recipes |", "|---|---|---|---|---|---|---|---|"]
    for name, d in methods.items():
        c = d["card"]
        recipes = ", ".join(f"`{r}`" for r in c.recipes) or "-"
        lines.append(f"| `{name}` | {_cell(c.learns)} | {_cell(d['views_text'])} | {_cell(c.cost)} | {c.dims} | "
                     f"{_cell(c.failure_modes)} | {VECTOR[METHODS[name].embedding_pool]} | {recipes} |")
    for name, d in methods.items():
        cls = METHODS[name]
        lines += ["", f"## `{name}`", "", f"`method.name: {name}` (`{cls.Settings.__name__}`, "
                  f"`{cls.__module__.replace('.', '/')}.py`).", "",
                  "| key | default | allowed | meaning |", "|---|---|---|---|"]
        lines += [f"| `method.{s.key}` | {_cell(_default(s.default))} | {_cell(s.type)} | {_cell(s.meaning)} |"
                  for s in d["settings"]]
    return "\n".join(lines) + "\n"


def methods_text(names: str | list[str] | None = None) -> str:
    """The plain-text listing of ``geomed-ssl methods``: every method (or those in ``names``) with what it learns,
    the views it needs, its cost, failure modes, recipes and settings (default, allowed values, meaning). An unknown
    name is a ConfigError listing the methods."""
    names = [names] if isinstance(names, str) else names
    for name in names or []:
        method_class(name, "geomed-ssl methods", what="method")
    methods = describe_methods()
    out: list[str] = []
    for name, d in methods.items():
        if names and name not in names:
            continue
        c = d["card"]
        out += [f"{name}  ({c.dims})", f"  learns:   {c.learns}", f"  views:    {d['views_text']}",
                f"  cost:     {c.cost}", f"  watch:    {c.failure_modes}",
                f"  vector:   {VECTOR[METHODS[name].embedding_pool]} (embed --pool auto)"]
        if c.recipes:
            out.append(f"  recipes:  {', '.join(c.recipes)}")
        out.append("  settings (method.KEY, default, allowed: meaning):")
        out += [f"    {s.key} = {_default(s.default)}  ({s.type}): {s.meaning}" for s in d["settings"]]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(methods_markdown(), end="")
