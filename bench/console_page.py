"""When a console page is usable, measured in headless Debian chromium (Selenium): from
the navigation's start to the moment the view marks itself ready (`#view[data-ready]`,
set once its data is drawn), a full page load each time (HTML, CSS, script, the sign-in
check and the view's GraphQL requests). Blocking: run it in a thread beside the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,800",
    "--lang=en-US",
)
# Installed before any page script runs: notes performance.now() (milliseconds since the
# navigation started) when the view is marked ready.
WATCH_READY = """
new MutationObserver((_, observer) => {
  const view = document.getElementById("view");
  if (view && view.dataset.ready) {
    window.__c360Ready = performance.now();
    observer.disconnect();
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-ready"]});
"""


def missing() -> str | None:
    """Why the page cannot be measured here, or None."""
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        absent.append("the selenium package")
    return f"needs {', '.join(absent)}" if absent else None


def page_times(
    base: str, token: str, pages: Mapping[str, str], rounds: int, timeout_s: float = 10
) -> dict[str, list[float]]:
    """Milliseconds until each page (label -> '#/view?params') is usable, `rounds` times,
    signed in once (the token stays in the tab's sessionStorage across loads)."""
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_window_size(1280, 800)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_READY})
        driver.get(base + "/console")
        driver.execute_script("sessionStorage.setItem('c360.console.token', arguments[0])", token)
        times: dict[str, list[float]] = {label: [] for label in pages}
        wait = WebDriverWait(driver, timeout_s, poll_frequency=0.02)
        for _ in range(rounds):
            for label, route in pages.items():
                driver.get("about:blank")  # so that the next load is a whole one
                driver.get(f"{base}/console{route}")
                try:
                    ready: Any = wait.until(lambda d: d.execute_script("return window.__c360Ready"))
                except TimeoutException:
                    shown = driver.execute_script("return document.body.innerText")[:300]
                    raise RuntimeError(f"{label}: not ready after {timeout_s} s: {shown}") from None
                times[label].append(float(ready))
        return times
    finally:
        driver.quit()
