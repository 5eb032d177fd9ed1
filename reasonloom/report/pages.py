"""The Jinja2 environment the report pages share: templates are package data, every value from
a run is escaped (autoescape); charts (inline SVG) and the run summary's HTML fragment are
built escaped and passed through `trusted_html`."""
from __future__ import annotations

from functools import lru_cache

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=PackageLoader("reasonloom.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["num"] = _num
    # our own matplotlib SVG and run_summary's HTML (which escapes every value it shows), never
    # a run's raw text
    env.filters["trusted_html"] = Markup
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)
