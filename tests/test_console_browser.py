"""The console in a real headless browser (Debian's chromium through its
chromedriver): an agent process holds a bulk UPDATE, the approver signs in,
sees it with its impact and approves it; the agent's statement runs once.
Self-approval, a missing CSRF token and an unauthenticated request are refused.

Skips when chromium is not installed, unless GUARDEDDB_REQUIRE_SERVERS=1 (CI),
where it fails: ``.ci/run`` installs it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb.console import Server, create_app
from guardeddb.console.auth import Auth

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REQUIRED = os.environ.get("GUARDEDDB_REQUIRE_SERVERS") == "1"
#: Where the test saves its screenshot for the README: set
#: GUARDEDDB_CONSOLE_SCREENSHOT=docs/console.png to refresh it; by default it
#: goes to the test's own directory, so a run leaves the checkout as it was.
SCREENSHOT_ENV = "GUARDEDDB_CONSOLE_SCREENSHOT"
ROOT = Path(__file__).resolve().parent.parent


def _unavailable(why: str) -> None:
    if REQUIRED:
        pytest.fail(f"{why} (GUARDEDDB_REQUIRE_SERVERS=1: the browser test must run)")
    pytest.skip(why)


try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None  # type: ignore[assignment]

pytest.importorskip("starlette", reason="the console extra is not installed")

TOKEN = "browser-test-token-" + uuid.uuid4().hex
AGENT_USER = "alice@example.com"

#: The agent: its own process, a guarded connection that holds the bulk
#: UPDATE, waits for a person's decision, retries, then tries it once more.
AGENT = r"""
import json, sys, time
import guardeddb
from guardeddb import ApprovalRequired, Identity
from guardeddb.approvals import ApprovalStore

policy = guardeddb.load_policy(sys.argv[1])
db, table = sys.argv[2], sys.argv[3]
sql = f"UPDATE {table} SET total_cents = total_cents + 500 WHERE status = 'pending'"
conn = guardeddb.connect(f"sqlite:///{db}", policy=policy)
store = ApprovalStore(str(policy.approvals["store"]))
outcomes, request_id = [], None

def attempt():
    global request_id
    try:
        conn.cursor().execute(sql)
    except ApprovalRequired as held:
        conn.rollback()
        request_id = request_id or held.request_id
        return "held"
    conn.commit()
    return "ran"

me = Identity(user="alice@example.com", agent="billing-bot", roles=frozenset({"support"}))
with guardeddb.identity(me):
    outcomes.append(attempt())
    print(json.dumps({"held": request_id}), flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and store.get(request_id).status == "pending":
        time.sleep(0.1)
    outcomes.append(attempt())
    outcomes.append(attempt())
conn.close()
print(json.dumps({"outcomes": outcomes}), flush=True)
"""

POLICY = """\
version: 1
extends: [agent-safe]
rules:
  - id: bulk-changes-need-a-human
    match: {{statements: [update, delete], where: true, affected_rows: {{gt: 1}}}}
    action: review
    message: changes to more than one row wait for a person
approvals:
  store: sqlite:///{store}
  ttl: 1h
  approvers: {{roles: [dba]}}
audit:
  jsonl: {audit}
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if webdriver is None:
        _unavailable("selenium is not installed (pip install 'guardeddb[test]')")
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not binary.exists():
            _unavailable(f"{binary} is missing: apt-get install -y {package}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _post(url: str, data: dict[str, str], cookie: str | None = None) -> int:
    """A POST from outside the browser; the status code."""
    body = "&".join(f"{k}={urllib.parse.quote(v)}" for k, v in data.items()).encode()
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _message(driver: Any) -> str:
    """The text of the page a form's POST led to, once it has loaded."""
    found = WebDriverWait(driver, 20).until(
        expected_conditions.presence_of_element_located((By.ID, "message"))
    )
    return str(found.text)


def _sign_in(driver: Any, base: str) -> None:
    driver.get(base + "/approvals")
    assert driver.current_url == base + "/login"  # no anonymous access
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 20).until(expected_conditions.url_to_be(base + "/approvals"))
    assert TOKEN not in driver.current_url


def test_an_approver_approves_a_held_bulk_update_in_the_browser(
    browser: Any, tmp_path: Path
) -> None:
    driver = browser
    table = f"console_orders_{uuid.uuid4().hex[:8]}"
    db = tmp_path / "shop.db"
    raw = sqlite3.connect(db)
    raw.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, total_cents INT, status TEXT)")
    raw.executemany(
        f"INSERT INTO {table} VALUES (?, ?, ?)",
        [(1, 1000, "pending"), (2, 2000, "pending"), (3, 3000, "shipped"), (4, 4000, "pending")],
    )
    raw.commit()
    raw.close()
    policy_path = tmp_path / "policy.yaml"
    audit = tmp_path / "audit.jsonl"
    policy_path.write_text(POLICY.format(store=tmp_path / "approvals.db", audit=audit))
    policy = guardeddb.load_policy(str(policy_path))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(policy_path), str(db), table],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    # Two consoles over the same stores: the requester's own (alice is a dba
    # too, and must still not approve her request) and the approver's.
    mine = Server(
        create_app(
            policy, Auth(TOKEN, guardeddb.Identity(user=AGENT_USER, roles=frozenset({"dba"})))
        )
    )
    theirs = Server(
        create_app(
            policy,
            Auth(TOKEN, guardeddb.Identity(user="dba@example.com", roles=frozenset({"dba"}))),
        )
    )
    own_base, base = mine.start(), theirs.start()
    try:
        assert agent.stdout is not None
        rid = json.loads(agent.stdout.readline())["held"]
        assert rid

        # Unauthenticated: a page sends you to sign in; a decision is refused.
        assert _post(f"{base}/approvals/{rid}", {"decision": "approve", "note": "x"}) == 401

        # Self-approval: alice sees her own request with no Approve button;
        # forcing one into the form is refused by the server.
        _sign_in(driver, own_base)
        card = driver.find_element(By.ID, f"request-{rid}")
        assert "Your own request" in card.text
        assert not card.find_elements(By.CSS_SELECTOR, "button.approve")
        card.find_element(By.NAME, "note").send_keys("my own change")
        driver.execute_script(
            "arguments[0].value = 'approve'", card.find_element(By.CSS_SELECTOR, "button.deny")
        )
        card.find_element(By.CSS_SELECTOR, "button.deny").click()
        assert "nobody approves their own request" in _message(driver)

        # The approver signs in and sees the request, its SQL and its impact.
        _sign_in(driver, base)
        card = driver.find_element(By.ID, f"request-{rid}")
        assert "alice@example.com via agent billing-bot" in card.text
        assert "bulk-changes-need-a-human" in card.text
        assert "a dry run counts 3 rows" in card.find_element(By.CLASS_NAME, "impact").text
        sql = card.find_element(By.CLASS_NAME, "sql").text
        assert sql == (
            f"UPDATE {table} SET total_cents = total_cents + 500 WHERE status = 'pending'"
        )
        shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "console.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0

        # A form without its CSRF token is refused.
        driver.execute_script(
            "arguments[0].remove()", card.find_element(By.CSS_SELECTOR, "input[name=csrf]")
        )
        card.find_element(By.NAME, "note").send_keys("checked the three orders")
        card.find_element(By.CSS_SELECTOR, "button.approve").click()
        assert "CSRF" in _message(driver)
        with sqlite3.connect(db) as check:
            totals = [r[0] for r in check.execute(f"SELECT total_cents FROM {table} ORDER BY id")]
        assert totals == [1000, 2000, 3000, 4000]

        # Approved properly: the agent's statement runs, once.
        driver.get(base + "/approvals")
        card = driver.find_element(By.ID, f"request-{rid}")
        card.find_element(By.NAME, "note").send_keys("checked the three orders")
        card.find_element(By.CSS_SELECTOR, "button.approve").click()
        assert "approved by dba@example.com" in _message(driver)
        outcome = json.loads(agent.stdout.readline())
        assert agent.wait(30) == 0
        assert outcome["outcomes"] == ["held", "ran", "held"]
        with sqlite3.connect(db) as check:
            totals = [r[0] for r in check.execute(f"SELECT total_cents FROM {table} ORDER BY id")]
        assert totals == [1500, 2500, 3000, 4500]

        # The audit page shows the held decision and the approval, chain intact.
        driver.get(base + "/audit")
        assert "Hash chain intact" in driver.find_element(By.ID, "chain").text
        held = driver.find_elements(By.CSS_SELECTOR, "tr.event-decision .action-review")
        assert held
        approval = driver.find_element(By.CSS_SELECTOR, "tr.event-approval")
        assert rid in approval.text and "dba@example.com" in approval.text
        assert "checked the three orders" in approval.text
        driver.get(base + "/activity")
        assert driver.find_elements(By.CSS_SELECTOR, "figure.chart svg")
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()
        mine.stop()
        theirs.stop()
