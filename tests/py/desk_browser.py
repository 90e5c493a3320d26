"""Drives the Decision Desk page in headless Chromium for tests/it/desk.rs.

The Rust test owns kla and the agent; this script owns the browser. They talk in JSON lines: the script prints
{"event": ...} lines on stdout and reads one instruction line on stdin.

  1. open the sign-in link, wait until the page is signed in and its event stream is live  -> {"event": "ready"}
  2. read {"approvalId", "comment"}; wait for that approval to appear on the page without a reload, read its
     card, type the comment and approve it with the keyboard (Tab to the Approve button, Enter)
                                                                                         -> {"event": "approved"}
  3. open the History tab and read the resolved approval                                -> {"event": "history"}
  4. read {"token"}; sign out, sign in again by pasting that API token, wait until live   -> {"event": "pasted"}
  5. read {"approvalId", "comment"}; wait for it to appear live, deny it with the mouse   -> {"event": "denied"}

Any failure prints {"event": "error", "message", "console"} and exits 1.
"""

import argparse
import json
import os
import sys
import time
import traceback

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 20


def emit(event, **fields):
    print(json.dumps(dict(event=event, **fields)), flush=True)


def wait_for(driver, what, cond, timeout=WAIT):
    try:
        return WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException]).until(
            lambda d: cond(d)
        )
    except TimeoutException:
        raise AssertionError("timed out after %ss waiting for %s" % (timeout, what)) from None


def visible(driver, css):
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0] if found and found[0].is_displayed() else None


def table_rows(card, css):
    rows = {}
    for tr in card.find_elements(By.CSS_SELECTOR, css):
        rows[tr.find_element(By.CSS_SELECTOR, "th").text] = tr.find_element(By.CSS_SELECTOR, "td").text
    return rows


def card_text(card):
    rows = table_rows(card, "table.context:not(.call) tr")
    return {
        # The whole call of a proxied action, which the approval binds.
        "call": table_rows(card, "table.call tr"),
        "action": card.find_element(By.CSS_SELECTOR, "h3 .action").text,
        "agent": card.find_element(By.CSS_SELECTOR, "h3 .agent").text,
        "timeLeft": card.find_element(By.CSS_SELECTOR, "time[data-expires]").text,
        "reason": card.find_element(By.CSS_SELECTOR, ".reason").text,
        "context": rows,
        "rules": [li.text for li in card.find_elements(By.CSS_SELECTOR, "ul.rules li")],
        "approveLabel": card.find_element(By.CSS_SELECTOR, "button.approve").get_attribute("aria-label"),
        # Elements inside the context cells: none, whatever markup an agent puts in its context.
        "elementsInContext": len(card.find_elements(By.CSS_SELECTOR, "table.context td *")),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--link", required=True)
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--chromedriver", required=True)
    ap.add_argument("--screenshots", help="directory for screenshots of the page (desktop and phone)")
    a = ap.parse_args()

    opts = webdriver.ChromeOptions()
    opts.binary_location = a.chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(a.chromedriver), options=opts)
    try:
        run(driver, a)
    except Exception as e:  # noqa: BLE001 - everything is reported to the Rust test
        try:
            console = [entry.get("message") for entry in driver.get_log("browser")]
        except Exception:  # noqa: BLE001
            console = []
        try:
            page = driver.find_element(By.TAG_NAME, "main").text[:4000]
        except Exception:  # noqa: BLE001
            page = ""
        emit("error", message="%s: %s" % (type(e).__name__, e), trace=traceback.format_exc(),
             console=console, page=page)
        sys.exit(1)
    finally:
        driver.quit()


def run(driver, a):
    driver.get(a.link)
    who = wait_for(driver, "the page to sign in", lambda d: visible(d, "#who"))
    wait_for(driver, "the event stream to be live",
             lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "live")
    assert visible(driver, "#desk"), "the desk is not shown"
    assert not visible(driver, "#signin"), "the sign-in form is still shown"
    url = driver.current_url
    assert "#" not in url and "code=" not in url, "the one-time code stays in the address bar: " + url
    cookie = driver.get_cookie("kla_desk")
    assert cookie is not None, "no session cookie"
    assert cookie.get("httpOnly") is True and cookie.get("sameSite") == "Strict", cookie
    assert driver.execute_script("return document.cookie") == "", "the session cookie is readable by scripts"
    # Proves below that the approval arrived while this page stayed loaded.
    driver.execute_script("window.__deskTestMarker = 'still-the-same-page';")
    pending = driver.find_elements(By.CSS_SELECTOR, "#pending-list > li")
    emit("ready", who=who.text, pendingBefore=len(pending))

    cmd = read_line()
    approval_id, comment = cmd["approvalId"], cmd["comment"]
    css = '#pending-list > li[data-approval-id="%s"]' % approval_id
    started = time.monotonic()
    card = wait_for(driver, "approval %s to appear live" % approval_id, lambda d: visible(d, css))
    appeared_ms = int((time.monotonic() - started) * 1000)
    assert driver.execute_script("return window.__deskTestMarker") == "still-the-same-page", "the page reloaded"
    seen = card_text(card)
    if a.screenshots:
        os.makedirs(a.screenshots, exist_ok=True)
        driver.save_screenshot(os.path.join(a.screenshots, "desk-pending.png"))
        driver.set_window_size(390, 1400)
        driver.save_screenshot(os.path.join(a.screenshots, "desk-phone.png"))
        driver.set_window_size(1280, 1000)

    # The keyboard path: type the comment, Tab to Approve, press Enter.
    box = card.find_element(By.CSS_SELECTOR, "textarea")
    box.click()
    box.send_keys(comment)
    box.send_keys(Keys.TAB)
    focused = driver.switch_to.active_element
    assert focused.get_attribute("class") == "approve", "Tab from the comment did not reach Approve: %s" % (
        focused.get_attribute("outerHTML")[:200])
    focused.send_keys(Keys.ENTER)
    wait_for(driver, "the approved card to leave the pending list", lambda d: not d.find_elements(By.CSS_SELECTOR, css))
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".card-error") if e.is_displayed()]
    emit("approved", card=seen, appearedMs=appeared_ms, errors=errors)

    tab = driver.find_element(By.ID, "tab-history")
    tab.click()
    hcss = '#history-list > li[data-approval-id="%s"]' % approval_id
    hcard = wait_for(driver, "the approval in the history", lambda d: visible(d, hcss))
    assert tab.get_attribute("aria-selected") == "true"
    quote = hcard.find_elements(By.CSS_SELECTOR, ".comment")
    if a.screenshots:
        driver.save_screenshot(os.path.join(a.screenshots, "desk-history.png"))
    emit("history", status=hcard.get_attribute("data-status"),
         comment=quote[0].text if quote else None,
         text=hcard.text)

    # Sign out, then in with a pasted API token: the stream now carries it in the Authorization header.
    token = read_line()["token"]
    driver.find_element(By.ID, "signout").click()
    wait_for(driver, "the sign-in form after signing out", lambda d: visible(d, "#signin"))
    assert driver.get_cookie("kla_desk") is None, "signing out left the session cookie"
    driver.find_element(By.ID, "token-input").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    who = wait_for(driver, "the page to sign in with the pasted token", lambda d: visible(d, "#who"))
    wait_for(driver, "the event stream to be live again",
             lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "live")
    emit("pasted", who=who.text)

    cmd = read_line()
    css = '#pending-list > li[data-approval-id="%s"]' % cmd["approvalId"]
    card = wait_for(driver, "approval %s to appear live" % cmd["approvalId"], lambda d: visible(d, css))
    card.find_element(By.CSS_SELECTOR, "textarea").send_keys(cmd["comment"])
    card.find_element(By.CSS_SELECTOR, "button.deny").click()
    wait_for(driver, "the denied card to leave the pending list", lambda d: not d.find_elements(By.CSS_SELECTOR, css))
    emit("denied")


def read_line():
    line = sys.stdin.readline()
    if not line:
        raise AssertionError("the test closed stdin before its next instruction")
    return json.loads(line)


if __name__ == "__main__":
    main()
