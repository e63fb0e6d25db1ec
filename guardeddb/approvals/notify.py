"""Webhook notifications: approvers hear that a request is waiting.

When a held query files a *new* approval request, each webhook of
``approvals.notify`` gets a POST: a JSON payload (or a Slack message) saying
who asked, which rule held what, its sanitized statement (every literal
replaced by ``?``: never the parameters or a value), the dry run's impact
and a link to the request in the console.

Delivery never touches the held query: the payload is queued (bounded;
dropped with a warning when full) and sent by a daemon thread, so a slow or
failing webhook neither delays the ``ApprovalRequired`` nor decides anything.
Bodies are signed with HMAC-SHA256 over ``<timestamp>.<body>``
(``X-Guardeddb-Timestamp``, ``X-Guardeddb-Signature: sha256=<hex>``), so a
receiver can refuse forgeries and replays (``verify_signature``); connection
errors, 5xx and 429 are retried with exponential backoff, a bounded number
of times within a bounded time.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..identity import Identity

__all__ = [
    "FORMATS",
    "Notifier",
    "Secret",
    "Webhook",
    "notifier_for",
    "payload",
    "sign",
    "slack",
    "verify_signature",
]

_log = logging.getLogger("guardeddb")

FORMATS = ("json", "slack")
SIGNATURE_HEADER = "X-Guardeddb-Signature"
TIMESTAMP_HEADER = "X-Guardeddb-Timestamp"
DELIVERY_HEADER = "X-Guardeddb-Delivery"
ATTEMPTS = 5  # tries per webhook and request
BACKOFF = 0.5  # seconds before the second try, doubled each time
MAX_WAIT = 30.0  # the longest pause between tries (a Retry-After included)
DEADLINE = 60.0  # seconds after which a delivery is given up, tries left or not
QUEUE_SIZE = 100  # requests waiting to be sent; beyond it they are dropped
EXIT_FLUSH = 5.0  # seconds a process exiting waits for queued deliveries
MAX_STATEMENT = 2000  # characters of the sanitized statement sent


@dataclass(frozen=True)
class Secret:
    """A webhook secret: its value kept out of ``repr``, so a policy printed
    or logged never shows it."""

    value: str = field(repr=False)


@dataclass(frozen=True)
class Webhook:
    """One ``approvals.notify`` entry, as the loader checked it."""

    url: str
    secret: Secret | None = None
    secret_env: str | None = None
    format: str = "json"
    timeout: float = 5.0

    @property
    def where(self) -> str:
        """The URL without its path and query (a Slack webhook's path is its
        token): what logs name."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def key(self) -> bytes | None:
        """The signing key, from the policy or its environment variable;
        None when neither gives one."""
        if self.secret is not None:
            return self.secret.value.encode()
        if self.secret_env:
            value = os.environ.get(self.secret_env)
            if value:
                return value.encode()
        return None


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: HMAC-SHA256 of ``<timestamp>.<body>``."""
    mac = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    key: bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """For receivers: whether ``signature`` signs ``body`` at ``timestamp``
    and that timestamp is within ``tolerance`` seconds of now (a replayed
    delivery is older)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    # As bytes: compare_digest refuses non-ASCII str, and a forger chooses it.
    return hmac.compare_digest(sign(key, timestamp, body).encode(), signature.encode())


def payload(
    request_id: str,
    ident: Identity | None,
    rule: str | None,
    message: str | None,
    statement: str,
    summary: str | None,
    impact: int | None,
    created: str,
    expires: str,
    link: str | None,
) -> dict[str, Any]:
    """The JSON a webhook receives for one new request. ``statement`` is the
    sanitized text (literals replaced by ``?``); identity attributes (a
    token's claims) are left out."""
    if len(statement) > MAX_STATEMENT:
        statement = statement[:MAX_STATEMENT] + f"... ({len(statement)} characters)"
    return {
        "event": "approval.requested",
        "id": request_id,
        "requested_by": {
            "user": ident.user if ident else None,
            "agent": ident.agent if ident else None,
            "roles": sorted(ident.roles) if ident else [],
            "verified": bool(ident.verified) if ident else False,
        },
        "rule": rule,
        "message": message,
        "statement": statement,
        "summary": summary,
        "impact": impact,
        "created": created,
        "expires": expires,
        "link": link,
    }


def _mrkdwn(text: str) -> str:
    """Text safe inside Slack mrkdwn: its three control characters escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_SLACK_SECTION = 2900  # characters of a section's text, under Slack's 3,000


def slack(event: Mapping[str, Any]) -> dict[str, Any]:
    """``event`` as a Slack incoming-webhook message: a one-line ``text``
    (notifications, clients without blocks) and blocks with the details and
    a button to the request in the console."""
    who = event["requested_by"]
    asker = " / ".join(str(x) for x in (who["user"], who["agent"]) if x) or "an anonymous caller"
    rule = event["rule"] or "a review rule"
    # Every field is escaped, ``text`` too: an agent named <!channel> pings nobody.
    text = _mrkdwn(f"Approval needed: {asker} ran a query held by {rule} (request {event['id']})")
    lines = [f"*Approval needed* for request `{_mrkdwn(event['id'])}`"]
    lines.append(
        f"*Who:* {_mrkdwn(asker)}"
        + (f" (roles: {_mrkdwn(', '.join(who['roles']))})" if who["roles"] else "")
    )
    lines.append(
        f"*Rule:* {_mrkdwn(rule)}" + (f": {_mrkdwn(event['message'])}" if event["message"] else "")
    )
    if event["impact"] is not None:
        lines.append(f"*Rows a dry run touched:* {event['impact']}")
    lines.append(f"*Expires:* {_mrkdwn(event['expires'])}")
    statement = _mrkdwn(event["statement"]).replace("```", "` ` `")
    if len(statement) > _SLACK_SECTION:  # Slack refuses a longer section
        statement = statement[:_SLACK_SECTION] + "..."
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"```{statement}```"}},
    ]
    if event["link"]:
        text += f": {_mrkdwn(event['link'])}"
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Review in the console"},
                        "url": event["link"],
                    }
                ],
            }
        )
    return {"text": text, "blocks": blocks}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a place to send the body again."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class Notifier:
    """Sends the notifications of one policy's webhooks from a daemon thread.

    ``submit`` never blocks and never raises: a full queue drops the
    notification with a warning. ``backoff`` and ``deadline`` are the
    retry schedule (tests shorten it).
    """

    def __init__(
        self,
        webhooks: Sequence[Webhook],
        console_url: str | None = None,
        *,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        deadline: float = DEADLINE,
        size: int = QUEUE_SIZE,
    ) -> None:
        self.webhooks = tuple(webhooks)
        self.console_url = console_url.rstrip("/") if console_url else None
        self.attempts = attempts
        self.backoff = backoff
        self.deadline = deadline
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        _live.add(self)

    def link(self, request_id: str) -> str | None:
        """The request's page in the console, when the policy names one."""
        return f"{self.console_url}/approvals/{request_id}" if self.console_url else None

    def submit(self, event: dict[str, Any]) -> bool:
        """Queue ``event`` for every webhook; False when it was dropped."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            _log.warning(
                "guardeddb: approval notification for request %s dropped: %d are "
                "already waiting to be sent",
                event.get("id"),
                self._queue.maxsize,
            )
            return False
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="guardeddb-notify", daemon=True
                )
                self._thread.start()
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for queued notifications to be
        sent (or given up); True when none is left."""
        end = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                for hook in self.webhooks:
                    try:
                        self.deliver(hook, event)
                    except Exception:  # a bug here must not end the thread
                        _log.exception("guardeddb: approval notification to %s failed", hook.where)
            finally:
                self._queue.task_done()

    def deliver(self, hook: Webhook, event: Mapping[str, Any]) -> bool:
        """POST ``event`` to ``hook``, retried; True once it was accepted."""
        key = hook.key()
        if key is None and (hook.secret is not None or hook.secret_env):
            # Fail closed: the policy asked for signed deliveries.
            _log.error(
                "guardeddb: approval notification to %s not sent: its secret_env %s is not set",
                hook.where,
                hook.secret_env,
            )
            return False
        body = json.dumps(
            slack(event) if hook.format == "slack" else event, ensure_ascii=False
        ).encode()
        delivery = uuid.uuid4().hex
        start = time.monotonic()
        why = "no attempt"
        for attempt in range(self.attempts):
            stamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "guardeddb-notify",
                DELIVERY_HEADER: delivery,
                TIMESTAMP_HEADER: stamp,
            }
            if key is not None:
                headers[SIGNATURE_HEADER] = sign(key, stamp, body)
            request = urllib.request.Request(hook.url, body, headers, method="POST")
            left = self.deadline - (time.monotonic() - start)
            wait: float | None = None
            try:
                with _OPENER.open(request, timeout=max(0.1, min(hook.timeout, left))) as answer:
                    answer.read(65536)
                return True
            except urllib.error.HTTPError as exc:
                why = f"HTTP {exc.code}"
                if exc.code != 429 and exc.code < 500:
                    break  # the receiver refused it: asking again gets the same
                wait = _retry_after(exc.headers.get("Retry-After"))
            except (OSError, ValueError) as exc:  # refused, reset, timed out, bad address
                reason = getattr(exc, "reason", None)  # a URLError wraps the socket's error
                cause = reason if isinstance(reason, BaseException) else exc
                why = f"{type(cause).__name__}: {cause}"
            if attempt + 1 >= self.attempts:
                break
            pause = min(MAX_WAIT, wait if wait is not None else self.backoff * 2**attempt)
            if time.monotonic() - start + pause >= self.deadline:
                break
            time.sleep(pause)
        _log.warning(
            "guardeddb: approval notification for request %s to %s not delivered (%s)",
            event.get("id"),
            hook.where,
            why,
        )
        return False


def _retry_after(value: str | None) -> float | None:
    """Seconds a 429's or 503's Retry-After asks for (a number of seconds only)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


_live: weakref.WeakSet[Notifier] = weakref.WeakSet()
_cache: dict[tuple[tuple[Webhook, ...], Any], Notifier] = {}
_cache_lock = threading.Lock()


def notifier_for(approvals: Mapping[str, Any]) -> Notifier | None:
    """The notifier of a policy's ``approvals`` section (None without
    webhooks): one per distinct configuration in a process, so connections
    share one thread and one queue."""
    hooks = approvals.get("notify")
    if not hooks:
        return None
    console = approvals.get("console_url")
    cache_key = (tuple(hooks), console)
    with _cache_lock:
        found = _cache.get(cache_key)
        if found is None:
            found = _cache[cache_key] = Notifier(hooks, console)
        return found


@atexit.register
def _flush_at_exit() -> None:
    """A process that exits right after its query was held (a script, a CLI
    run) still sends the notification: bounded by ``EXIT_FLUSH`` seconds."""
    end = time.monotonic() + EXIT_FLUSH
    for notifier in list(_live):
        notifier.flush(max(0.0, end - time.monotonic()))
