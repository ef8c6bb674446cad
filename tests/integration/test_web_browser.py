"""The status page in a real browser: headless Debian Chromium driven by Selenium through the
Debian chromedriver (no browser download). A person logs in, sees a message sent over SMTP in
Recent with its trace, sees a broken script save's error with its source line, retries a queue
entry, and a `<script>` subject stays text. Screenshots go to docs/images/ (shown in the README).

Issue #27, docs/web.md.
"""

import time
from pathlib import Path

import pytest

from conftest import REPO, wait_for
from webpage import PASSWORD, queue_entries, send, start, wait_queue

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is installed by test.sh")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = REPO / "docs" / "images"


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are missing: test.sh installs them")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                f"--user-data-dir={tmp_path / 'chromium'}", "--disable-gpu"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def login(driver, base):
    driver.get(base + "/")
    assert driver.current_url.endswith("/login")
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: "SMTP sessions in flight" in driver.page_source, timeout=5)


def shot(driver, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / name))


def test_a_message_sent_over_smtp_shows_in_recent_with_its_trace(daemon, browser):
    d, base = start(daemon)
    login(browser, base)
    qid = send(d.port, "junk: cheap watches", sender="carol@remote.example")
    send(d.port, "Minutes of Monday's meeting", sender="dave@remote.example", message_id="<m2@remote.example>")
    wait_queue(d)
    # The Now page refreshes itself: the numbers change without a reload.
    def depth_is_one():
        try:
            return browser.find_element(By.ID, "queue-depth").text == "1"
        except StaleElementReferenceException:  # replaced by the refresh as it was read
            return False

    assert wait_for(depth_is_one, timeout=8)
    shot(browser, "web-now.png")
    browser.get(base + "/messages")
    row = browser.find_element(By.XPATH, f"//a[text()='{qid}']/ancestor::tr")
    assert "junk: cheap watches" in row.text and "carol@remote.example" in row.text
    shot(browser, "web-recent.png")
    browser.find_element(By.LINK_TEXT, qid).click()
    stages = browser.find_element(By.ID, "stages").text
    assert "data accept 10-junk.rhai:8" in stages and 'file_into("Junk")' in stages
    events = browser.find_element(By.ID, "events").text
    assert "to bob@example.org in Junk" in events and "forward to boss@remote.example queued" in events
    shot(browser, "web-trace.png")
    # Search by subject.
    browser.get(base + "/messages")
    box = browser.find_element(By.NAME, "q")
    box.send_keys("minutes")
    box.submit()
    table = browser.find_element(By.ID, "recent").text
    assert "Minutes of Monday" in table and "cheap watches" not in table


def test_a_script_subject_does_not_execute(daemon, browser):
    d, base = start(daemon)
    login(browser, base)
    payload = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
    qid = send(d.port, payload)
    for path in ["/messages", f"/messages/{qid}"]:
        browser.get(base + path)
        time.sleep(0.3)
        assert browser.title != "pwned"
        assert browser.execute_script("return document.querySelectorAll('main script, main img').length") == 0
        assert payload in browser.find_element(By.TAG_NAME, "main").text


def test_a_broken_script_save_shows_its_error_with_the_line(daemon, browser):
    d, base = start(daemon)
    login(browser, base)
    d.write_script("20-broken.rhai", "fn data(ctx, msg) {\n    let x = ;\n}\n")
    assert wait_for(lambda: "scripts not reloaded" in d.log(), timeout=10)
    browser.get(base + "/scripts")
    result = browser.find_element(By.ID, "reload-result").text
    assert "Last reload failed" in result
    assert "20-broken.rhai:2:" in result and "let x = ;" in result
    # The previous set stays live.
    assert "10-junk.rhai" in browser.find_element(By.ID, "files").text
    assert "20-broken.rhai" not in browser.find_element(By.ID, "files").text
    shot(browser, "web-scripts-error.png")


def test_a_queue_entry_can_be_retried_and_deleted(daemon, browser):
    d, base = start(daemon)
    login(browser, base)
    send(d.port, "junk again")
    entry = wait_queue(d)[0]
    assert entry["next_try"] > time.time()
    browser.get(base + "/queue")
    row = browser.find_element(By.ID, f"q-{entry['id']}")
    assert "boss@remote.example" in row.text and "in " in row.find_element(By.CLASS_NAME, "next").text
    shot(browser, "web-queue.png")
    row.find_element(By.NAME, "retry").click()
    assert browser.current_url.endswith("/queue")
    # Tried again at once: the relay is still down, so the attempts grow.
    assert wait_for(lambda: queue_entries(d) and queue_entries(d)[0]["attempts"] >= 2, timeout=10)
    browser.get(base + "/queue")
    browser.find_element(By.ID, f"q-{entry['id']}").find_element(By.NAME, "delete").click()
    assert wait_for(lambda: queue_entries(d) == [], timeout=5)
    assert not browser.find_elements(By.ID, f"q-{entry['id']}")


def test_try_a_script_in_the_browser(daemon, browser):
    d, base = start(daemon)
    login(browser, base)
    browser.get(base + "/try")
    area = browser.find_element(By.NAME, "message")
    area.clear()
    area.send_keys("From: x@remote.example\nTo: bob@example.org\nSubject: junk\n\nhi\n")
    browser.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
    result = browser.find_element(By.ID, "try-result").text
    assert "verdict: accept (by 10-junk.rhai)" in result and 'action: forward("boss@remote.example")' in result
    shot(browser, "web-try.png")
    assert queue_entries(d) == []
