"""``guardeddb console``: pending approvals, the audit trail and per-agent
activity in a browser, over the stores a policy already names.

Needs the ``console`` extra (Starlette, Jinja2, uvicorn). Bound to
127.0.0.1 unless told otherwise; nobody gets in without a token.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from ..identity import Identity

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..policy import Policy
    from .auth import Auth

__all__ = ["Server", "add_arguments", "create_app", "run", "serve"]

TOKEN_ENV = "GUARDEDDB_CONSOLE_TOKEN"


def create_app(policy: Policy, auth: Auth, *, jaeger_url: str | None = None) -> Starlette:
    """The console's ASGI app (see ``guardeddb.console.app``)."""
    from .app import create_app as make

    return make(policy, auth, jaeger_url=jaeger_url)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``guardeddb console`` options."""
    parser.add_argument("--policy", required=True, help="the policy YAML whose stores to show")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument(
        "--token-env",
        default=TOKEN_ENV,
        help=f"environment variable holding the operator's sign-in token (default {TOKEN_ENV})",
    )
    parser.add_argument(
        "--user",
        default=os.environ.get("GUARDEDDB_CONSOLE_USER"),
        help="the operator the token signs in (default $GUARDEDDB_CONSOLE_USER)",
    )
    parser.add_argument(
        "--roles",
        default=os.environ.get("GUARDEDDB_CONSOLE_ROLES", ""),
        help="the operator's comma-separated roles (default $GUARDEDDB_CONSOLE_ROLES)",
    )
    jwt = parser.add_argument_group("OIDC/JWT sign-in", "people sign in with a signed token")
    jwt.add_argument("--jwks", help="JWKS URL or file that signs the tokens")
    jwt.add_argument("--issuer", help="expected iss")
    jwt.add_argument("--audience", help="expected aud")
    jwt.add_argument("--roles-claim", default="roles", help="claim with the roles")


def auth_from(args: argparse.Namespace) -> Auth:
    """The sign-in ``args`` configure; ValueError when none is (no anonymous access)."""
    from .auth import Auth

    token = os.environ.get(args.token_env) or None
    roles = frozenset(r.strip() for r in (args.roles or "").split(",") if r.strip())
    operator = Identity(user=args.user, roles=roles) if args.user else None
    jwt = None
    if args.jwks:
        jwt = {
            "jwks": args.jwks,
            "issuer": args.issuer,
            "audience": args.audience,
            "roles_claim": args.roles_claim,
        }
    if token is None and jwt is None:
        raise ValueError(
            f"no way to sign in: set {args.token_env} (with --user/--roles) or give --jwks"
        )
    return Auth(token=token, operator=operator, jwt=jwt)


class Server:
    """uvicorn serving the console from a thread (the demo, the tests)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", server_header=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self, timeout: float = 15.0) -> str:
        """Start serving; the base URL."""
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the console did not start")
            time.sleep(0.02)
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def serve(app: Any, host: str, port: int) -> Server:
    """Start the console in a thread; see ``Server``."""
    server = Server(app, host, port)
    server.start()
    return server


def _warm(app: Any) -> None:
    """Read and verify the whole trail before the first page asks (a
    100,000-record trail takes seconds); the page waits for it if it must."""
    trail = app.state.trail
    if trail is None:
        return
    try:
        trail.refresh()
    except Exception as exc:  # the page load tries again and shows the error
        print(f"warning: reading the audit trail: {exc}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """``guardeddb console``: serve until interrupted."""
    try:
        import uvicorn
    except ImportError as exc:
        print(f"error: the console needs its extra ({exc}): pip install 'guardeddb[console]'")
        return 2
    from ..errors import PolicyError
    from ..policy import load_policy

    try:
        policy = load_policy(args.policy)
        auth = auth_from(args)
    except (PolicyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(policy, auth)
    threading.Thread(target=_warm, args=(app,), daemon=True).start()
    print(f"guardeddb console on http://{args.host}:{args.port}/ (sign in with the token)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", server_header=False)
    return 0
