"""Render the Helm chart without the helm binary (not installable here).

The chart's templates keep to a small subset of Helm's Go-template language — values and
release fields, ``quote``, ``toYaml X | nindent N``, ``required "msg" X``, ``if``/``if not``/
``else``/``end`` — which this module translates to Jinja2 and renders. Anything outside the
subset raises, so the chart cannot drift into syntax these tests would silently misread.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import jinja2
import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
_FIELD = re.compile(r"\.(Values|Release|Chart)\b")
_VALUE = re.compile(r'(not )?(Values|Release|Chart)(\.\w+)+|\((Values|Release|Chart)(\.\w+)+ \| toyaml\)'
                    r'|required\("[^"]*", (Values|Release|Chart)(\.\w+)+\)')
_FILTER = re.compile(r"quote|nindent\(\d+\)")


class UnsupportedTemplate(ValueError):
    pass


def _expression(text: str, where: str) -> str:
    expr = _FIELD.sub(r"\1", text)
    expr = re.sub(r"toYaml (\S+)", r"(\1 | toyaml)", expr)
    expr = re.sub(r"\bnindent (\d+)", r"nindent(\1)", expr)
    expr = re.sub(r'required ("[^"]*") (\S+)', r"required(\1, \2)", expr)
    value, *filters = [part.strip() for part in re.split(r"\|(?![^(]*\))", expr)]
    if not _VALUE.fullmatch(value) or not all(_FILTER.fullmatch(f) for f in filters):
        raise UnsupportedTemplate(f"{where}: '{{{{ {text} }}}}' is outside the supported template subset")
    return expr


def to_jinja(source: str, where: str = "template") -> str:
    def action(match: re.Match) -> str:
        left, body, right = match.groups()
        if body.startswith("/*"):
            return ""
        if body.startswith("if "):
            return f"{{%{left} if {_expression(body[3:], where)} {right}%}}"
        if body == "else":
            return f"{{%{left} else {right}%}}"
        if body == "end":
            return f"{{%{left} endif {right}%}}"
        if re.match(r"(range|with|define|include|template|block)\b", body):
            raise UnsupportedTemplate(f"{where}: '{{{{ {body} }}}}' is outside the supported template subset")
        return f"{{{{{left} {_expression(body, where)} {right}}}}}"

    return _ACTION.sub(action, source)


def _nindent(text: str, width: int) -> str:
    return "\n" + textwrap.indent(str(text), " " * width)


def _required(message: str, value: Any) -> Any:
    if value in (None, ""):
        raise UnsupportedTemplate(f"required value missing: {message}")
    return value


def merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def render_chart(chart: Path, release: str = "demo", overrides: dict | None = None) -> list[dict]:
    """Every manifest the chart renders with ``values.yaml`` merged with ``overrides``."""
    values = merge(yaml.safe_load((chart / "values.yaml").read_text()), overrides or {})
    metadata = yaml.safe_load((chart / "Chart.yaml").read_text())
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    environment.filters.update(quote=lambda v: json.dumps(str(v)), nindent=_nindent,
                               toyaml=lambda v: yaml.safe_dump(v, default_flow_style=False, sort_keys=False).rstrip())
    environment.globals["required"] = _required
    context = {"Values": values, "Release": {"Name": release, "Namespace": "default"},
               "Chart": {"Name": metadata["name"], "Version": metadata["version"]}}
    documents = []
    for path in sorted((chart / "templates").glob("*.yaml")):
        text = environment.from_string(to_jinja(path.read_text(), path.name)).render(context)
        documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return documents
