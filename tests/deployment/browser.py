"""Headless Chromium (Debian's ``chromium`` + ``chromedriver``) driven by Selenium, for the
recovery view's browser test: log in through Airflow's own login page, open a view as Airflow
shows it (an iframe in the Airflow page), read it, click, and save screenshots.

Only loopback is reached: the flags switch off Chromium's own background traffic, and Selenium
is told to stay offline (the driver is Debian's, never downloaded).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1000",
)


class Browser:
    def __init__(self, base_url: str, screenshots: Path) -> None:
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.base_url = base_url.rstrip("/")
        self.screenshots = screenshots
        screenshots.mkdir(parents=True, exist_ok=True)
        self._profile = tempfile.mkdtemp(prefix="bfx-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={self._profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.driver.set_page_load_timeout(60)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    # -- waiting ------------------------------------------------------------------------------
    def wait(self, what: str, probe: Callable[[], Any], timeout: float = 45.0) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = probe()
            except Exception as exc:  # noqa: BLE001 - the page is still loading: try again
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.3)
        self.shot("timeout")
        raise AssertionError(f"browser: {what} not seen after {timeout} s (last: {last!r})")

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def one(self, selector: str) -> Any:
        found = self.css(selector)
        assert len(found) == 1, f"{selector!r}: {len(found)} element(s)"
        return found[0]

    # -- Airflow --------------------------------------------------------------------------------
    def login(self, username: str, password: str) -> None:
        """Through Airflow's login page (the simple auth manager's form), as a person does."""
        self.driver.get(f"{self.base_url}/auth/login?next=/")
        user = self.wait("the login form", lambda: self.css("input[name=username]"))[0]
        user.send_keys(username)
        self.one("input[name=password]").send_keys(password)
        self.one("button[type=submit]").click()
        self.wait("the session cookie", lambda: self.driver.get_cookie("_token"), timeout=30)

    @contextmanager
    def view(self, path: str, page: str) -> Iterator[Browser]:
        """Open an Airflow page holding one of our views, and work inside its iframe."""
        from selenium.webdriver.common.by import By

        self.driver.switch_to.default_content()
        self.driver.get(self.base_url + path)
        frame = self.wait(
            "the Recovery iframe",
            lambda: self.driver.find_elements(By.CSS_SELECTOR, "iframe[title=Recovery]"),
        )[0]
        self.driver.switch_to.frame(frame)
        self.wait(
            f"the {page} page in the iframe",
            lambda: self.css(f"body[data-page={page}]") or self._error_page(),
        )
        try:
            yield self
        finally:
            self.driver.switch_to.default_content()

    def _error_page(self) -> bool:
        errors = self.css("[data-error]")
        if errors:
            raise AssertionError(f"the view answered an error page: {errors[0].text}")
        return False

    def shot(self, name: str) -> Path:
        """A screenshot of the whole Airflow page (the view in its frame)."""
        path = self.screenshots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path
