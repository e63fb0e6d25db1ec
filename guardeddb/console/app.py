"""The console's web application: routes, sign-in, headers.

Every page but the sign-in form needs a session; every POST needs the CSRF
token of the session (or of the sign-in form's pre-session cookie). Nothing
sensitive is put in a URL: tokens and decisions travel in POST bodies, the
request id (not secret) in the path.
"""

from __future__ import annotations

import datetime
import functools
import os
import unicodedata
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..approvals import (
    ApprovalRequest,
    ApprovalStore,
    DecisionRefused,
    decide,
    may_decide,
    parse_ttl,
    requester,
    same_user,
)
from ..policy import Policy
from .auth import Auth, Session
from .charts import line_chart
from .trail import METRICS, Filters, TrailView

__all__ = ["HEADERS", "create_app"]

_HERE = Path(__file__).parent
SESSION_COOKIE = "guardeddb_session"
LOGIN_COOKIE = "guardeddb_login"
PER_PAGE = 50
MAX_BODY = 64 * 1024

#: Sent with every response: no script at all, no framing, no sniffing, no referrer.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def visible(value: object) -> str:
    """``value`` with what a reader cannot see written out: control and
    format characters (bidi overrides, zero-width spaces) as ``\\uXXXX``,
    so the statement an approver reads is the statement that runs."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch not in "\n\t" and unicodedata.category(ch) in _HIDDEN:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _span(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def _pending_view(req: ApprovalRequest, viewer: Session, approver: bool) -> dict[str, Any]:
    """A pending request as the page shows it to ``viewer``."""
    now = _now()
    asked = requester(req)
    created = datetime.datetime.fromisoformat(req.created)
    expires = datetime.datetime.fromisoformat(req.expires)
    return {
        "id": req.id,
        "user": asked.get("user"),
        "agent": asked.get("agent"),
        "roles": ", ".join(asked.get("roles") or ()),
        "verified": asked.get("verified"),
        "rule": req.rule,
        "reason": req.reason,
        "statement": req.statement if approver else None,
        "params": req.params if approver else None,
        "impact": req.impact,
        "database": req.database if approver else None,
        "age": _span((now - created).total_seconds()),
        "ttl": _span((expires - now).total_seconds()),
        "own": same_user(asked.get("user"), viewer.identity.user),
    }


def create_app(
    policy: Policy,
    auth: Auth,
    *,
    jaeger_url: str | None = None,
) -> Starlette:
    """The console over ``policy``'s approval store and audit trail."""
    cfg = policy.approvals
    store = (
        ApprovalStore(str(cfg["store"]), parse_ttl(str(cfg.get("ttl", "1h"))))
        if cfg.get("store")
        else None
    )
    trail = (
        TrailView(policy.audit)
        if policy.audit.get("jsonl") or policy.audit.get("postgresql")
        else None
    )
    jaeger = (jaeger_url or os.environ.get("GUARDEDDB_JAEGER_URL") or "").rstrip("/") or None
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"), autoescape=select_autoescape(default=True)
    )
    env.filters["visible"] = visible

    def page(
        request: Request, name: str, session: Session | None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        csrf = auth.csrf(session.nonce) if session is not None else ""
        body = env.get_template(name).render(
            session=session, csrf=csrf, path=request.url.path, **ctx
        )
        return HTMLResponse(body, status_code=status)

    def refused(request: Request, session: Session | None, status: int, why: str) -> HTMLResponse:
        return page(request, "message.html", session, status, title="Refused", message=why)

    async def authed(request: Request) -> Session | None:
        return auth.session(request.cookies.get(SESSION_COOKIE))

    async def checked_post(request: Request) -> tuple[Session | None, Any, Response | None]:
        """The session and form of a POST, or the response refusing it."""
        session = await authed(request)
        if session is None:
            return None, None, refused(request, None, 401, "Sign in first.")
        form = await request.form()
        if not auth.csrf_ok(session.nonce, form.get("csrf")):
            return None, None, refused(request, session, 403, "Missing or wrong CSRF token.")
        return session, form, None

    async def login_form(request: Request) -> Response:
        cookie = auth.pre_session()
        nonce = cookie.split(".")[0]
        response = page(request, "login.html", None, login_csrf=auth.login_csrf(nonce), error=None)
        _cookie(response, LOGIN_COOKIE, cookie, 600)
        return response

    async def login(request: Request) -> Response:
        nonce = auth.pre_nonce(request.cookies.get(LOGIN_COOKIE))
        form = await request.form()
        if nonce is None or not auth.login_csrf_ok(nonce, form.get("csrf")):
            return refused(
                request, None, 403, "Missing or wrong CSRF token: reload the sign-in page."
            )
        token = form.get("token")
        # A JWKS URL may be fetched: off the event loop.
        found = (
            await run_in_threadpool(auth.authenticate, token) if isinstance(token, str) else None
        )
        if found is None:
            cookie = auth.pre_session()
            response = page(
                request,
                "login.html",
                None,
                401,
                login_csrf=auth.login_csrf(cookie.split(".")[0]),
                error="That token does not sign anyone in.",
            )
            _cookie(response, LOGIN_COOKIE, cookie, 600)
            return response
        ident, expires = found
        signed_in = RedirectResponse("/approvals", status_code=303)
        _cookie(signed_in, SESSION_COOKIE, auth.start(ident, expires), int(expires - _ts()))
        signed_in.delete_cookie(LOGIN_COOKIE)
        return signed_in

    async def logout(request: Request) -> Response:
        session, _form, bad = await checked_post(request)
        if bad is not None:
            return bad
        assert session is not None
        auth.end(session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    async def home(request: Request) -> Response:
        return RedirectResponse("/approvals" if await authed(request) else "/login", 303)

    async def approvals(request: Request) -> Response:
        session = await authed(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        approver = may_decide(policy, session.identity)
        pending: list[dict[str, Any]] = []
        if store is not None:
            now = _now().isoformat()
            pending = [
                _pending_view(r, session, approver)
                for r in await run_in_threadpool(store.list, "pending")
                if r.expires > now
            ]
        return page(
            request,
            "approvals.html",
            session,
            pending=pending,
            approver=approver,
            has_store=store is not None,
            has_approvers=bool(policy.approvals.get("approvers")),
        )

    async def decide_route(request: Request) -> Response:
        session, form, bad = await checked_post(request)
        if bad is not None:
            return bad
        assert session is not None
        if store is None:
            return refused(request, session, 404, "The policy has no approval store.")
        verdict = form.get("decision")
        note = form.get("note")
        if verdict not in ("approve", "deny"):
            return refused(request, session, 400, "Choose approve or deny.")
        if not isinstance(note, str) or not note.strip():
            return refused(request, session, 400, "Give a reason: it goes into the audit trail.")
        rid = request.path_params["rid"]
        try:
            await run_in_threadpool(
                functools.partial(
                    decide,
                    store,
                    policy,
                    rid,
                    verdict == "approve",
                    None,
                    note.strip()[:2000],
                    decider=session.identity,
                )
            )
        except DecisionRefused as exc:
            return refused(request, session, 403, str(exc))
        return page(
            request,
            "message.html",
            session,
            title="Decided",
            message=f"Request {rid} {'approved' if verdict == 'approve' else 'denied'} "
            f"by {session.identity.user}; the decision is in the audit trail.",
        )

    async def audit(request: Request) -> Response:
        session = await authed(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        if trail is None:
            return page(
                request,
                "message.html",
                session,
                title="Audit",
                message="The policy has no audit trail.",
            )
        q = request.query_params
        filters = Filters(**{k: q.get(k, "").strip()[:200] for k in Filters.__dataclass_fields__})
        try:
            number = max(1, min(int(q.get("page", "1")), 10**6))
        except ValueError:
            number = 1
        await run_in_threadpool(trail.refresh)  # file or database reads, off the loop
        records, total = trail.query(filters, number, PER_PAGE)
        args = {k: v for k, v in filters.__dict__.items() if v}
        return page(
            request,
            "audit.html",
            session,
            status_=trail.status(),
            trail=trail.name,
            records=records,
            total=total,
            page_no=number,
            pages=max(1, -(-total // PER_PAGE)),
            filters=filters,
            query_args=args,
            choices=trail.choices(),
            jaeger=jaeger,
        )

    async def activity(request: Request) -> Response:
        session = await authed(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        if trail is None:
            return page(
                request,
                "message.html",
                session,
                title="Activity",
                message="The policy has no audit trail.",
            )
        await run_in_threadpool(trail.refresh)  # file or database reads, off the loop
        sections = []
        for by in ("agent", "user"):
            act = trail.activity(by)
            ranked = sorted(
                act.groups, key=lambda g: -act.totals[g]["queries"] if g in act.totals else 0
            )
            charts = [
                {
                    "name": g,
                    "svg": Markup(line_chart(f"{by} {g}", act.buckets, act.groups[g])),
                    "totals": {m: act.totals[g][m] if g in act.totals else 0 for m in METRICS},
                }
                for g in ranked[:12]
            ]
            sections.append({"by": by, "charts": charts})
        return page(request, "activity.html", session, sections=sections, metrics=METRICS)

    routes = [
        Route("/", home),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/approvals", approvals, methods=["GET"]),
        Route("/approvals/{rid:str}", decide_route, methods=["POST"]),
        Route("/audit", audit, methods=["GET"]),
        Route("/activity", activity, methods=["GET"]),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders)])
    app.state.trail = trail  # `guardeddb console` reads it ahead of the first page
    return app


class _SecurityHeaders:
    """Adds ``HEADERS`` to every HTTP response, errors and static files included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if not length.isdigit() or int(length) > MAX_BODY:
                # A form is small; a body of unknown or large size is refused
                # before anything reads it (the sign-in form takes no session).
                refuse = Response("a form of at most 64 KiB, with Content-Length", 413)
                await refuse(scope, receive, self._with_headers(send))
                return
        await self.app(scope, receive, self._with_headers(send))

    @staticmethod
    def _with_headers(send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in HEADERS.items():
                    headers[key] = value
            await send(message)

        return sending


def _ts() -> float:
    import time

    return time.time()


def _cookie(response: Response, name: str, value: str, max_age: int) -> None:
    """A cookie no script can read and no other site's request carries."""
    response.set_cookie(
        name, value, max_age=max(max_age, 0), httponly=True, samesite="strict", path="/"
    )
