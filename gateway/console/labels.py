"""The console's labels in English and Simplified Chinese (`labels.json`): one file for
the console's pages and for the printable subject report, which the command line writes
and the console draws, so the two say the same thing."""

from __future__ import annotations

import functools
import json
from pathlib import Path

LANGUAGES = ("en", "zh-CN")
# The printable subject report's languages, in the order the page gives them.
REPORT_LANGUAGES = ("zh-CN", "en")


@functools.cache
def labels() -> dict[str, dict[str, str]]:
    path = Path(__file__).parent / "labels.json"
    loaded: dict[str, dict[str, str]] = json.loads(path.read_text("utf-8"))
    return loaded
