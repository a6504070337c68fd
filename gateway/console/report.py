"""A person's report (`subjectReport`) as a page for the person: the query the command
line and the console both send, and the printable page the command line writes. The
console draws the same page from the same labels (`report.*` in labels.json)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2

from gateway.console.labels import REPORT_LANGUAGES, labels

REPORT = """query SubjectReport($email: String, $phone: String, $customer: ID) {
  subjectReport(email: $email, phone: $phone, customer: $customer) {
    customer generatedAt systemsUnavailable
    linked { system key }
    records { system entity key values { name value } }
    accesses { at kind subject roles purpose client requestId fields { field decision } }
  }
}"""


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def render_html(report: dict[str, Any]) -> str:
    """The printable page for the person: Chinese, then English."""
    return (
        _templates()
        .get_template("subject_report.html")
        .render(report=report, labels=labels(), languages=REPORT_LANGUAGES)
    )
