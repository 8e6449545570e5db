"""The lab console in a real browser: Debian's headless Chromium, driven by selenium through
Debian's chromedriver, loads the page of a gateway polling the simulated lab and sees what
a person would: every equipment's row, the statuses in words, a value that changes, the
coverage figure, the broken chain, and an event after a simulator fault is armed.

A screenshot is kept in the test's tmp dir (and at ``$CALGATE_CONSOLE_SCREENSHOT``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, require_binary, wait_for_async
from labconfig import lab_config

from gateway.service import Gateway, load_everything
from simulators.faults import Fault
from simulators.lab import Lab

pytestmark = pytest.mark.e2e

EQUIPMENT = ("BAL-01", "BAL-02", "PC-01", "PT-101", "PT-102", "UTM-01")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1600,1200")  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium from Debian (``chromium``, ``chromium-driver``), a new profile."""
    binary = require_binary("chromium", "/usr/bin/chromium")
    driver_path = require_binary("chromedriver", "/usr/bin/chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.binary_location = binary
    driver = webdriver.Chrome(options=opts, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def api(base: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base}{path}", timeout=5) as resp:
        return json.loads(resp.read())


async def until(driver: Any, check: Callable[[Any], Any], what: str, timeout_s: float = 20) -> Any:
    """``check(driver)`` in a thread (selenium blocks) until it is truthy; its result."""
    import asyncio

    from selenium.common.exceptions import WebDriverException

    found: list[Any] = []

    def probe() -> bool:
        try:
            res = check(driver)
        except WebDriverException:
            return False
        if res:
            found.append(res)
        return bool(res)

    async def step() -> bool:
        return await asyncio.to_thread(probe)

    await wait_for_async(step, timeout_s=timeout_s, what=what)
    return found[-1]


def text_of(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def row_texts(driver: Any) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#board tbody tr")
    return {r.get_attribute("data-equipment"): r.text for r in rows}


def screenshot(driver: Any, path: Path) -> None:
    """The whole page: the window as tall as the document."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1600, max(1200, int(height) + 40))
    driver.save_screenshot(str(path))


async def test_a_person_sees_the_lab_live(tmp_path: Path, browser: Any) -> None:
    import asyncio

    http = f"127.0.0.1:{free_port()}"
    base = f"http://{http}"
    async with Lab(fixed_ports=False, opcua=True, seed=11) as lab:
        config, registry = load_everything(lab_config(lab, tmp_path, http=http, interval_s=0.2))
        gw = Gateway(config, registry)
        await gw.start()
        try:
            await asyncio.to_thread(browser.get, f"{base}/")
            rows = await until(
                browser,
                lambda d: (
                    (r := row_texts(d)) and all("online" in r.get(e, "") for e in EQUIPMENT) and r
                ),
                "every equipment's row, online",
            )
            assert tuple(rows) == EQUIPMENT
            for eq in EQUIPMENT:
                assert "±" in rows[eq], rows[eq]  # value ± U
                assert "(k = 2)" in rows[eq], rows[eq]
            assert "untraceable" in rows["BAL-02"]  # the broken chain, in words
            assert "due soon" in rows["PT-102"]  # the certificate due soon
            assert "valid" in rows["BAL-01"]
            assert "PCL-2025-1201" in rows["PT-102"]

            # the coverage figure, as the API computes it (the API's own test checks it)
            cov = await asyncio.to_thread(api, base, "/api/coverage")
            share = cov["instruments"]["share"]
            want = f"{int(share * 1000) / 10} %"
            figure = await until(browser, lambda d: text_of(d, "#coverage-figure") == want
                                 and want, "the coverage figure")  # fmt: skip
            assert figure == "83.3 %"  # 5 of the 6 instruments: BAL-02's chain is broken
            gaps = await asyncio.to_thread(text_of, browser, "#coverage-gaps")
            assert "BAL-02 weight ⚠ untraceable" in gaps, gaps
            assert "MCS-2023-0220 was not in force" in gaps

            # the broken chain is the one shown first (it needs attention)
            chain = await until(browser, lambda d: "expired" in (t := text_of(d, "#chain")) and t,
                                "BAL-02's chain")  # fmt: skip
            assert "MCS-2026-0310" in chain
            assert "MCS-2023-0220" in chain
            assert "NMI" in chain
            # each standard with the day it had to be in force: REF-W1's "valid, due
            # 2024-03-31" is its state when WS-F1 was calibrated with it, in 2023
            assert "due 2026-02-28; needed in force on 2026-03-10" in chain  # WS-F1's, expired
            assert "due 2024-03-31; needed in force on 2023-02-20" in chain  # REF-W1's
            assert "due 2028-03-10; needed" not in chain  # BAL-02's own: used by nothing
            # the plot's time axis as the rest of the page writes times: 24-hour, ISO dates
            # (uPlot's default drew "7:25am" over "12/3/26")
            labels = await until(browser, lambda d: d.execute_script(
                "const p = Object.values(state.plots)[0];"
                "const v = p && p.plot.axes[0]._values && p.plot.axes[0]._values.join('|');"
                "return v && v.includes(':') && v;"
            ), "the plot's time labels")  # fmt: skip
            assert not any(mark in labels for mark in ("am", "pm", "/")), labels
            templates = ["{M}/{D}/{YY} {h}:{mm}{aa}", "{h}:{mm}{aa}", "{M}/{D}", "{h}{aa}"]
            made = await asyncio.to_thread(browser.execute_script,
                "const at = new Date(2026, 11, 3, 19, 25);"
                "return arguments[0].map((t) => uPlot.fmtDate(isoTemplate(t))(at));",
                templates)  # fmt: skip
            assert made == ["2026-12-03 19:25", "19:25", "12-03", "19:00"], made
            legend = await asyncio.to_thread(text_of, browser, "#plots .u-legend")
            assert "value" in legend, legend  # the key of the lines …
            assert "--" not in legend, legend  # … without empty cursor values
            due = await asyncio.to_thread(text_of, browser, "#due")
            assert due.index("PCL-2025-1201") < due.index("MCS-2026-1022")  # soonest first

            # a value that changes between two looks
            def value(d: Any) -> str:
                return text_of(d, 'tr[data-equipment="PT-101"] .val')

            first = await asyncio.to_thread(value, browser)
            await until(browser, lambda d: value(d) != first, "PT-101's value to change")

            # a fault armed in a simulator shows as an event and in the row
            lab.balance.faults.arm(Fault.NO_REPLY)
            events = await until(
                browser,
                lambda d: "BAL-01 does not answer" in (t := text_of(d, "#events")) and t,
                "BAL-01's offline event",
            )
            assert "critical" in events
            await until(browser, lambda d: "offline" in row_texts(d)["BAL-01"], "BAL-01 offline")

            # the events filtered by type, then by equipment
            def choose(d: Any, select: str, value: str) -> bool:
                from selenium.webdriver.common.by import By
                from selenium.webdriver.support.ui import Select

                Select(d.find_element(By.ID, select)).select_by_value(value)
                return True

            await asyncio.to_thread(choose, browser, "filter-type", "equipment_offline")
            only = await asyncio.to_thread(text_of, browser, "#events")
            assert "BAL-01 does not answer" in only
            assert "calibration untraceable" not in only
            await asyncio.to_thread(choose, browser, "filter-type", "")
            await asyncio.to_thread(choose, browser, "filter-equipment", "BAL-02")
            only = await asyncio.to_thread(text_of, browser, "#events")
            assert "calibration untraceable" in only
            assert "BAL-01" not in only
            await asyncio.to_thread(choose, browser, "filter-equipment", "")
            shot = tmp_path / "console.png"
            await asyncio.to_thread(screenshot, browser, shot)
            assert shot.stat().st_size > 10_000
            extra = os.environ.get("CALGATE_CONSOLE_SCREENSHOT")
            if extra:
                shutil.copyfile(shot, extra)

            # a 1024 px screen: the page does not scroll sideways (a wide table scrolls in
            # its card) and the coverage figure stays on one line ("83.3" over "%" before)
            def narrow(d: Any) -> dict[str, int]:
                d.set_window_size(1024, 768)
                return dict(d.execute_script(
                    "const f = document.getElementById('coverage-figure');"
                    "const line = parseFloat(getComputedStyle(f).lineHeight);"
                    "return {over: document.documentElement.scrollWidth - "
                    "document.documentElement.clientWidth, lines: Math.round(f.offsetHeight / line)};"
                ))  # fmt: skip

            fit = await asyncio.to_thread(narrow, browser)
            assert fit == {"over": 0, "lines": 1}, fit
            logs = await asyncio.to_thread(browser.get_log, "browser")
            errors = [e["message"] for e in logs if e["level"] == "SEVERE"]
            assert not errors, errors  # no script error, nothing missing
        finally:
            await gw.stop()


async def test_with_a_token_the_browser_asks_once_and_the_page_stays_live(
    tmp_path: Path, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off loopback the console needs the token: a wall screen's browser gives it as basic
    auth once (here in the URL, as a kiosk would), and the page and its stream work."""
    import asyncio

    monkeypatch.setenv("CALGATE_TEST_CONSOLE_TOKEN", "wall-screen-token")
    http = f"127.0.0.1:{free_port()}"
    async with Lab(fixed_ports=False, opcua=False, seed=12) as lab:
        path = lab_config(lab, tmp_path, http=http, interval_s=0.2, only=["PT-101", "PT-102"])
        text = path.read_text().replace(
            f'listen = "{http}"', f'listen = "{http}"\ntoken_env = "CALGATE_TEST_CONSOLE_TOKEN"'
        )
        path.write_text(text)
        config, registry = load_everything(path)
        gw = Gateway(config, registry)
        await gw.start()
        try:
            await asyncio.to_thread(browser.get, f"http://{http}/")
            page = await asyncio.to_thread(lambda: browser.page_source)
            assert "calgate lab console" not in page  # 401: no token, no console
            await asyncio.to_thread(browser.get, f"http://anyone:wall-screen-token@{http}/")
            await until(browser, lambda d: all("online" in t for t in row_texts(d).values())
                        and len(row_texts(d)) == 2, "both rows online")  # fmt: skip
            live = await until(browser, lambda d: (t := text_of(d, "#live")).startswith("live")
                               and t, "the stream to deliver")  # fmt: skip
            assert "updated" in live
        finally:
            await gw.stop()


async def test_the_demo_prints_the_console_url_first_and_it_shows_the_lab(browser: Any) -> None:
    """A new user's first minute: ``calgate demo``, open the printed URL, see the lab live
    with its due-soon certificate and its broken chain."""
    import asyncio
    import signal
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", "--embedded-broker", "--no-influxd",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert first.startswith("lab console:  http://127.0.0.1:"), first
        url = first.split()[2]

        async def drain() -> None:  # the live table goes on printing
            assert proc.stdout is not None
            while await proc.stdout.read(65536):
                pass

        reader = asyncio.create_task(drain())

        def opened(d: Any) -> bool:  # the URL is printed before the gateway listens
            d.get(url)
            return "calgate lab console" in d.title

        await until(browser, opened, "the demo's console to answer", timeout_s=60)
        rows = await until(
            browser,
            lambda d: (
                (r := row_texts(d)) and all("online" in r.get(e, "") for e in EQUIPMENT) and r
            ),
            "the demo lab's rows, online",
            timeout_s=60,
        )
        assert "untraceable" in rows["BAL-02"]
        assert "due soon" in rows["PT-102"]
        chain = await until(browser, lambda d: "expired" in (t := text_of(d, "#chain")) and t,
                            "the broken chain")  # fmt: skip
        assert "MCS-2023-0220" in chain
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        await reader
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
