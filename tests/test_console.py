"""The security console end to end, in headless Debian chromium driven by Selenium:
real requests as sales, marketing and service (a bulk-access alert), then security signs
in, finds the customer's timeline by email, filters it by field and decision, exports it
as CSV, acknowledges the alert and opens the reader's footprint; marketing is refused.
The page, its inputs and its CSV files never carry a raw value of the customer the test
read. Screenshots of each view go to the test's tmp dir, and the timeline's to
docs/console.png (shown in docs/console.md and the README) when C360_UPDATE_SCREENSHOT=1."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bench.console_page import CHROMEDRIVER, CHROMIUM, FLAGS
from bench.console_page import missing as missing_browser
from demo.people import DemoWorld, Person
from demo.systems import DemoSystems
from gateway.audit.sinks import JsonlSink
from gateway.console.report import render_html
from harness import RunningGateway, running_gateway, unavailable

DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "console.png"
READ = """query($e: String!) { customerByEmail(email: $e) {
  id name email phone nationalId address } }"""
PAGE = "query($n: Int) { customers(first: $n) { edges { node { id name phone } } } }"
# A subject id with no place to break, as service accounts have them.
LONG_SUBJECT = "svc-batch-export-" + "0123456789abcdef" * 6


def _require_browser() -> None:
    """Skip without chromium, its driver or selenium; on CI (CI=true) that is a failure."""
    absent = missing_browser()
    if absent is None:
        return
    unavailable(f"{absent} (make test installs chromium and chromium-driver)")


@dataclass
class Browser:
    """The few things the test does with the page, each waiting for the page to settle."""

    driver: Any
    base: str
    shots: Path
    downloads: Path
    sources: list[str]
    values: list[str]  # of every input, select and textarea: page_source has none of them

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def wait(self, condition: Callable[[], Any], timeout: float = 10) -> Any:
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            TimeoutException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        # An element found may be replaced before it is read (the page redraws a panel
        # when an answer comes): ask again, as for one not there yet.
        ignored = (NoSuchElementException, StaleElementReferenceException)
        try:
            return WebDriverWait(
                self.driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored
            ).until(lambda _: condition())
        except TimeoutException as error:  # a timeout alone does not say what was shown
            shown = self.driver.execute_script("return document.body.innerText")
            raise TimeoutException(
                f"after {timeout} s at {self.driver.current_url}, the page shows:\n{shown}"
            ) from error

    def ready(self, view: str) -> None:
        self.wait(lambda: self.find("#view").get_attribute("data-ready") == view)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.sources.append(self.driver.page_source)
        self.values.extend(
            self.driver.execute_script(
                "return Array.from(document.querySelectorAll('input, select, textarea'),"
                " (e) => e.value)"
            )
        )
        return path

    def sign_in(self, token: str) -> None:
        self.wait(lambda: self.find("#signin").is_displayed())
        self.find("#token").send_keys(token)
        self.find("#signin-form button[type=submit]").click()

    def rows(self, table: str) -> list[list[str]]:
        return [
            [cell.text for cell in row.find_elements("css selector", "td")]
            for row in self.all(f"{table} tbody tr")
        ]

    def downloaded(self, name: str) -> str:
        """The file's text; the file is then kept under a name of its own, since chromium
        overwrites a download of the same name."""
        path = self.downloads / name
        self.wait(lambda: path.exists() and path.stat().st_size > 0, timeout=10)
        text = path.read_text(encoding="utf-8-sig")
        path.rename(path.with_name(f"{len(list(self.downloads.iterdir()))}-{name}"))
        return text

    def overflow(self) -> int:
        """How many pixels the widest overflow sticks out: the page beyond the window, a
        table beyond its box, a cell beyond its column (0: everything fits)."""
        script = (
            "const boxes = [document.documentElement,"
            " ...document.querySelectorAll('#view .tablewrap, #view td, #view th, #view dd')];"
            " return Math.max(0, ...boxes.map((e) => e.scrollWidth - e.clientWidth));"
        )
        return int(self.driver.execute_script(script))

    def focused(self) -> str:
        """The focused element, as `tag#id` or `tag in #section`."""
        script = (
            "const e = document.activeElement; const s = e.closest('section[id]');"
            " return e.tagName + (e.id ? '#' + e.id : '') + (s ? ' in #' + s.id : '');"
        )
        return str(self.driver.execute_script(script))


# Export pages of the timeline that never end, to reach the export's cap of 10,000 rows
# without a log that large: every other request goes to the gateway.
ENDLESS_TIMELINE = """
window.realFetch = window.fetch;
window.fetch = async (url, init) => {
  const body = JSON.parse(init.body);
  if (!body.query.includes("ConsoleTimeline") || body.variables.first !== 50) {
    return window.realFetch(url, init);
  }
  const node = { id: "x:1", kind: "access", ts: "2026-01-01T00:00:00Z", subject: "x",
    roles: ["sales"], purpose: "sales", client: "x", operation: null, outcome: "ok",
    traceId: null, fields: [] };
  const edges = Array.from({ length: 50 }, () => ({ node }));
  const page = { accessLog: { edges, pageInfo: { hasNextPage: true, endCursor: "more" } } };
  return new Response(JSON.stringify({ data: page }),
    { headers: { "content-type": "application/json" } });
};
"""


@pytest.fixture
def browser_factory(tmp_path: Path) -> Iterator[Callable[[str], Browser]]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers: list[Any] = []

    def start(base: str) -> Browser:
        downloads = tmp_path / "downloads"
        shots = tmp_path / "screenshots"
        downloads.mkdir(exist_ok=True)
        shots.mkdir(exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(downloads),
                "download.prompt_for_download": False,
                "intl.accept_languages": "en-US,en",
            },
        )
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER)), options=options
        )
        drivers.append(driver)
        driver.set_window_size(1280, 800)
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        return Browser(driver, base, shots, downloads, [], [])

    yield start
    for driver in drivers:
        driver.quit()


def security_session(
    browser: Browser, person: Person, cuid: str, tokens: dict[str, str]
) -> dict[str, Any]:
    """Runs in a thread: Selenium blocks, and the gateway serves on the test's loop."""
    seen: dict[str, Any] = {}
    browser.open("/console")
    browser.sign_in(tokens["security"])
    browser.ready("overview")
    # The overview does not wait for the chains' check; the page asks until it is done.
    browser.wait(lambda: "Intact" in browser.find("#integrity").text, timeout=30)
    seen["overview"] = {
        "integrity": browser.find("#integrity").text,
        "top": browser.rows("#top-subjects"),
        "charts": len(browser.all("#chart-roles svg rect")),
    }
    seen["overflow"] = {"overview": browser.overflow()}
    browser.shot("overview")

    # The timeline, found by email through the crosswalk, using the keyboard's Enter.
    browser.find('#nav a[data-view="timeline"]').click()
    browser.ready("timeline")
    browser.find("#f-customer").send_keys(person.email + "\n")
    browser.wait(lambda: cuid in browser.driver.current_url)
    browser.ready("timeline")
    seen["url"] = browser.driver.current_url
    seen["name"] = browser.find("#customer-name").text
    seen["timeline"] = browser.rows("#timeline-table")
    seen["policies"] = [
        (chip.text, chip.is_displayed()) for chip in browser.all("#timeline-table .chip .policy")
    ]
    seen["overflow"]["timeline"] = browser.overflow()
    browser.shot("timeline")

    # Only nationalId, only denied: marketing's read.
    from selenium.webdriver.support.ui import Select

    Select(browser.find("#f-field")).select_by_value("nationalId")
    Select(browser.find("#f-decision")).select_by_value("deny")
    browser.find("#f-show").click()
    browser.wait(lambda: "decision=deny" in browser.driver.current_url)
    browser.ready("timeline")
    seen["filtered"] = browser.rows("#timeline-table")
    browser.find('#timeline-table [data-export="TIMELINE"]').click()
    seen["csv"] = browser.downloaded(f"c360-timeline-{cuid}.csv")
    browser.wait(lambda: "Exported" in browser.find("#timeline-table .pager").text)
    browser.shot("timeline-filtered")

    # An export cut short at its cap says so.
    browser.driver.execute_script(ENDLESS_TIMELINE)
    browser.find('#timeline-table [data-export="TIMELINE"]').click()
    browser.wait(lambda: "of more" in browser.find("#timeline-table .pager").text, timeout=30)
    seen["capped"] = browser.find("#timeline-table .pager").text
    browser.driver.execute_script("window.fetch = window.realFetch")
    seen["capped_rows"] = len(browser.downloaded(f"c360-timeline-{cuid}.csv").splitlines())

    # The skip link, from the keyboard: focus moves to the content, the view stays.
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    before = browser.driver.current_url
    browser.driver.execute_script("document.querySelector('a.skip').focus()")
    ActionChains(browser.driver).send_keys(Keys.ENTER).perform()
    browser.wait(lambda: browser.focused().startswith("H1"))
    seen["skipped"] = {
        "url": (before, browser.driver.current_url),
        "view": browser.find("#view").get_attribute("data-ready"),
        "tables": len(browser.all("#timeline-table")),
        "focus": browser.focused(),
    }

    # The long subject's own footprint: its id wraps instead of widening the page.
    browser.open(f"/console#/footprint?subject={LONG_SUBJECT}")
    browser.ready("footprint")
    browser.wait(lambda: browser.rows("#footprint-customers"))
    seen["overflow"]["footprint"] = browser.overflow()
    browser.shot("footprint-long-subject")

    # The alert, acknowledged; then the reader's footprint from the alert's link.
    browser.find('#nav a[data-view="alerts"]').click()
    browser.ready("alerts")
    seen["alerts"] = browser.rows("#alerts-table")
    browser.shot("alerts")
    browser.find("#alerts-table [data-ack]").click()
    browser.wait(lambda: not browser.all("#alerts-table [data-ack]"))
    # The row's button is gone with the rebuilt table: the keyboard goes to its heading.
    browser.wait(lambda: browser.focused() == "H2 in #alerts-table")
    from selenium.webdriver.support.ui import Select as Choose

    Choose(browser.find("#a-state")).select_by_value("all")
    browser.wait(lambda: "state=all" in browser.driver.current_url)
    browser.ready("alerts")
    seen["acknowledged"] = browser.rows("#alerts-table")
    browser.shot("alerts-acknowledged")
    footprint_link = browser.all("#alerts-table td a")[0]
    footprint_link.click()
    browser.ready("footprint")
    browser.wait(lambda: browser.rows("#footprint-customers"))
    seen["footprint"] = {
        "customers": browser.find("#fp-customers").text,
        "rows": browser.rows("#footprint-customers"),
        "decisions": browser.rows("#footprint-decisions"),
    }
    browser.find('#footprint-decisions [data-export="FOOTPRINT_DECISIONS"]').click()
    seen["decisions_csv"] = browser.downloaded("c360-decisions-bob.csv")
    browser.shot("footprint")

    # Chinese labels, switched on the page; times keep their offset.
    Select(browser.find("#lang")).select_by_value("zh-CN")
    browser.ready("footprint")
    seen["chinese_nav"] = browser.find('#nav a[data-view="timeline"]').text
    seen["offset_shown"] = "UTC" in browser.find("#footprint-customers tbody td:last-child").text
    seen["chinese_days_legend"] = browser.find("#chart-days .legend").text
    browser.shot("footprint-zh")
    browser.find('#nav a[data-view="overview"]').click()
    browser.ready("overview")
    seen["chinese_decisions_legend"] = browser.find("#chart-decisions .legend").text
    browser.shot("overview-zh")

    # Back to English, then out; a marketing token gets the refusal and no data.
    Select(browser.find("#lang")).select_by_value("en")
    browser.find("#signout").click()
    browser.sign_in(tokens["marketing"])
    browser.wait(lambda: browser.find("#denied").is_displayed())
    seen["denied"] = browser.find("#denied").text
    seen["denied_view_children"] = len(browser.all("#view *"))
    seen["token_kept_in"] = browser.driver.execute_script(
        "return [document.cookie, location.href, Object.keys(localStorage)]"
    )
    browser.shot("refused")
    return seen


async def test_the_security_console_in_a_browser(
    demo_systems: DemoSystems,
    tmp_path: Path,
    demo_world: DemoWorld,
    browser_factory: Callable[[str], Browser],
) -> None:
    person = next(p for p in demo_world.persons if p.sales_ids and p.requester_id)
    crm = next(c for c in demo_world.sales.customers if c.id == person.sales_ids[0])
    overrides = {"audit.alerts.bulk_customers": 15}
    async with running_gateway(demo_systems, tmp_path / "gateway", overrides) as gateway:
        read = await gateway.query(
            READ, {"e": person.email}, gateway.as_role("sales", subject="alice")
        )
        cuid = read.data["customerByEmail"]["id"]
        await gateway.query(
            "query($id: ID!) { customer(id: $id) { name email phone nationalId } }",
            {"id": cuid},
            gateway.as_role("marketing", subject="carol"),
        )
        await gateway.query(PAGE, {"n": 20}, gateway.as_role("service", subject="bob"))
        await gateway.query(
            "query($id: ID!) { customer(id: $id) { name } }",
            {"id": cuid},
            gateway.as_role("sales", subject=LONG_SUBJECT),
        )
        await gateway.gateway.access_log.flush()
        tokens = {
            "security": gateway.token("sam", ["security"], ["audit"]),
            "marketing": gateway.token("carol", ["marketing"], ["marketing"]),
        }
        browser = await asyncio.to_thread(browser_factory, gateway.url)
        seen = await asyncio.to_thread(security_session, browser, person, cuid, tokens)
        written = await _records(gateway)
        bob = gateway.gateway.masks["hash"]("bob")  # a subject looked for, as recorded

    assert "Intact" in seen["overview"]["integrity"]
    assert seen["overview"]["charts"] > 0
    assert any(row[0] == "bob" and row[1] == "20" for row in seen["overview"]["top"])

    assert "@" not in seen["url"] and f"customer={cuid}" in seen["url"]
    assert seen["name"] == crm.full_name.strip()[0] + "*" * (len(crm.full_name.strip()) - 1)
    subjects = [row[1] for row in seen["timeline"]]
    assert subjects[-3:] == [LONG_SUBJECT, "carol", "alice"]  # newest first
    # Long ids and names wrap: nothing is wider than the 1280 px window.
    assert seen["overflow"] == {"overview": 0, "timeline": 0, "footprint": 0}
    alice = seen["timeline"][-1]
    assert "nationalId: mask" in alice[5] and "email: allow" in alice[5]
    # Each decision's policy is on the page, not only in a hover title.
    assert ("customer.nationalId", True) in seen["policies"]
    assert "nationalId: mask customer.nationalId" in alice[5]

    [denied_row] = seen["filtered"]
    assert denied_row[1] == "carol" and "nationalId: deny" in denied_row[5]
    exported = list(csv.reader(io.StringIO(seen["csv"])))
    assert exported[0][:3] == ["When", "Who", "Role"]
    [row] = exported[1:]
    assert row[1:4] == ["carol", "marketing", "marketing"]
    assert "nationalId=deny (customer.nationalId)" in row[5]
    assert "Exported 10,000 rows (the first 10,000 of more" in seen["capped"]
    assert seen["capped_rows"] == 1 + 10_000
    (before, after) = seen["skipped"]["url"]
    assert after == before and "#/timeline?" in after
    assert seen["skipped"]["view"] == "timeline" and seen["skipped"]["tables"] == 1
    assert seen["skipped"]["focus"] == "H1 in #view"

    [alert] = seen["alerts"]
    assert alert[1] == "Bulk access" and alert[2].startswith("bob")
    assert "20 distinct customers" in alert[3]
    [acked] = seen["acknowledged"]
    assert "Acknowledged by sam" in acked[4]
    assert seen["footprint"]["customers"] == "20"
    assert len(seen["footprint"]["rows"]) == 20
    decisions = list(csv.reader(io.StringIO(seen["decisions_csv"])))
    assert decisions[0] == ["Field", "Allowed", "Masked", "Denied"]
    assert decisions[1:] == [row[:4] for row in seen["footprint"]["decisions"]]

    assert seen["chinese_nav"] == "客户访问时间线"
    assert "不同客户数 (20)" in seen["chinese_days_legend"]
    assert "customers" not in seen["chinese_days_legend"]
    legend = seen["chinese_decisions_legend"]
    assert "允许" in legend and "拒绝" in legend
    assert not any(word in legend for word in ("allow", "mask", "deny"))
    assert seen["offset_shown"]
    assert "Not allowed" in seen["denied"] and seen["denied_view_children"] == 0
    cookie, url, local_keys = seen["token_kept_in"]
    assert cookie == "" and "ey" not in url and local_keys == ["c360.console.lang"]

    # No raw value of the customer the test read, on any page the browser showed, in any
    # input's value or in any CSV file it exported.
    raw_values = {
        person.email,
        crm.email.strip(),
        crm.phone.strip(),
        person.phone,
        crm.national_id,
        person.national_id,
        crm.full_name.strip(),
        crm.address.strip(),
    }
    exported_files = sorted(browser.downloads.glob("*.csv"))
    assert len(exported_files) == 3
    shown = [
        *browser.sources,
        *browser.values,
        *(path.read_text(encoding="utf-8-sig") for path in exported_files),
    ]
    assert browser.values  # the filters' inputs were read
    for text in shown:
        for raw in raw_values:
            assert raw not in text

    # What the console did is in the access log: the ack, the export, the views.
    [ack] = [r for r in written if r["kind"] == "ack"]
    assert ack["subject"] == "sam"
    looked = [r["audit_query"] for r in written if r.get("audit_query")]
    assert {"customer": cuid, "field": "nationalId", "decision": "deny"} in looked
    exports = [q for q in looked if q.get("view") == "export"]
    assert [(q["table"], q["rows"]) for q in exports] == [
        ("timeline", 1),
        ("timeline", 10_000),
        ("footprint_decisions", len(decisions) - 1),
    ]
    # A subject looked for is kept as its keyed pseudonym (`[policies] hash_key`).
    assert exports[0]["customer"] == cuid and exports[2]["subject"] == bob
    assert any(q.get("view") == "footprint" and q["subject"] == bob for q in looked)
    refused = [r for r in written if r["subject"] == "carol" and r["outcome"] != "ok"]
    assert refused and refused[-1]["client"] == "c360-console"
    assert not any(raw in str(written) for raw in raw_values)

    if os.environ.get("C360_UPDATE_SCREENSHOT") == "1":  # a test run leaves the tree alone
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(browser.shots / "timeline.png", DOCS_SCREENSHOT)


# The text of the console's drawing of a person's report, node by node.
REPORT_TEXT = """
const walker = document.createTreeWalker(
  document.getElementById("subject-report"), NodeFilter.SHOW_TEXT);
const parts = [];
while (walker.nextNode()) parts.push(walker.currentNode.data);
return parts;
"""


class _BodyText(HTMLParser):
    """The text nodes of a page's body, as the browser's walker above lists them."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.body = self.body or tag == "body"

    def handle_data(self, data: str) -> None:
        if self.body:
            self.parts.append(data)


def _words(parts: list[str]) -> list[str]:
    return [" ".join(part.split()) for part in parts if part.strip()]


def privacy_session(
    browser: Browser, person: Person, cuid: str, tokens: dict[str, str]
) -> dict[str, Any]:
    """Runs in a thread: Selenium blocks, and the gateway serves on the test's loop."""
    from selenium.webdriver.support.ui import Select

    seen: dict[str, Any] = {}
    browser.open("/console")
    browser.sign_in(tokens["privacy"])
    browser.ready("rights")  # the privacy office's one page
    Select(browser.find("#s-kind")).select_by_value("email")
    browser.find("#s-key").send_keys(person.email + "\n")
    browser.wait(lambda: browser.all("#subject-report section"))
    seen["languages"] = [s.get_attribute("lang") for s in browser.all("#subject-report > section")]
    seen["text"] = browser.driver.execute_script(REPORT_TEXT)
    seen["controls"] = {
        control: browser.find(f"#{control}").text for control in ("report-print", "report-json")
    }
    seen["key"] = browser.find("#s-key").get_attribute("value")
    seen["kept_in"] = browser.driver.execute_script(
        "return [location.href, JSON.stringify(localStorage), Object.keys(sessionStorage)]"
    )
    # The list shows the report just run, once the log holds it.
    browser.wait(
        lambda: any(
            r[1] == "Subject report" and r[2] == cuid for r in browser.rows("#rights-table")
        )
    )
    browser.shot("subject-report")
    browser.find("#report-json").click()
    seen["json"] = browser.downloaded(f"c360-subject-report-{cuid}.json")
    # Printed: the report alone.
    browser.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    seen["printed"] = {
        part: browser.find(part).is_displayed()
        for part in (".bar", "#subject-lookup", "#report-tools", "#rights-table", "#subject-report")
    }
    browser.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    browser.driver.execute_script("window.printed = 0; window.print = () => { window.printed++; };")
    browser.find("#report-print").click()
    seen["print_called"] = browser.driver.execute_script("return window.printed")

    # Security reads the rights list, but a person's report is not theirs to run.
    browser.find("#signout").click()
    browser.sign_in(tokens["security"])
    browser.ready("overview")
    browser.find('#nav a[data-view="rights"]').click()
    browser.ready("rights")
    seen["after_sign_out"] = len(browser.all("#subject-report"))
    Select(browser.find("#s-kind")).select_by_value("customer")
    browser.find("#s-key").send_keys(cuid + "\n")
    browser.wait(lambda: browser.find("#s-problem").text)
    seen["refused"] = browser.find("#s-problem").text
    seen["refused_report"] = len(browser.all("#subject-report"))
    browser.shot("subject-report-refused")
    return seen


async def test_the_privacy_office_reads_a_persons_report_in_a_browser(
    demo_systems: DemoSystems,
    tmp_path: Path,
    demo_world: DemoWorld,
    browser_factory: Callable[[str], Browser],
) -> None:
    """The privacy officer looks a person up by email and reads their report, unmasked,
    in Chinese and English, the command line's page word for word; prints it (the report
    alone) and saves it as JSON; the email stays out of the URL and the browser's storage.
    Security, acting for audit, is refused."""
    person = next(p for p in demo_world.persons if p.sales_ids and p.requester_id)
    async with running_gateway(demo_systems, tmp_path / "gateway") as gateway:
        read = await gateway.query(
            READ, {"e": person.email}, gateway.as_role("sales", subject="alice")
        )
        cuid = read.data["customerByEmail"]["id"]
        tokens = {
            "privacy": gateway.token("dpo", ["privacy"], ["rights"]),
            "security": gateway.token("sam", ["security"], ["audit"]),
        }
        browser = await asyncio.to_thread(browser_factory, gateway.url)
        seen = await asyncio.to_thread(privacy_session, browser, person, cuid, tokens)
        written = await _records(gateway)

    assert seen["languages"] == ["zh-CN", "en"]
    text = " ".join(_words(seen["text"]))
    assert person.national_id in text  # their own data: no other page shows it unmasked
    assert "我们持有的您的个人信息" in text and "What we hold about you" in text
    assert "alice (sales)" in text  # who accessed it
    assert seen["controls"] == {"report-print": "Print", "report-json": "Download JSON"}
    assert seen["print_called"] == 1
    assert seen["printed"] == {
        ".bar": False,
        "#subject-lookup": False,
        "#report-tools": False,
        "#rights-table": False,
        "#subject-report": True,
    }
    # The JSON is the report shown, and the page is the command line's, word for word.
    saved = json.loads(seen["json"])
    assert saved["customer"] == cuid
    printed = _BodyText()
    printed.feed(render_html(saved))
    assert _words(seen["text"]) == _words(printed.parts)
    # What the officer typed is in no address, no storage, no field.
    url, local, session_keys = seen["kept_in"]
    assert person.email not in url and "@" not in url and person.email not in local
    assert session_keys == ["c360.console.token"] and seen["key"] == ""

    assert seen["after_sign_out"] == 0
    assert "Not allowed" in seen["refused"] and "rights.report" in seen["refused"]
    assert seen["refused_report"] == 0

    [report] = [r for r in written if (r.get("audit_query") or {}).get("view") == "subject-report"]
    assert report["audit_query"]["customer"] == cuid
    assert (report["subject"], report["purpose"], report["client"]) == (
        "dpo",
        "rights",
        "c360-console",
    )
    [refused] = [r for r in written if r.get("status") == 403]
    assert (refused["reason"], refused["client"]) == ("purpose", "c360-console")
    assert person.email not in str(written)


async def _records(gateway: RunningGateway) -> list[dict[str, Any]]:
    await gateway.gateway.access_log.flush()
    sink = gateway.gateway.config.audit_sink
    assert isinstance(sink, JsonlSink)
    return [record for _, record in sink.lines() if record is not None]
