"""The console's HTTP server: Starlette routes over pages.py, Jinja2 templates, uvicorn.

    python -m app.console.server [--port 8090] [--run-dir .cascade] [--simulation-dir DIR]
    # env: CASCADE_CONSOLE_*, e.g. CASCADE_CONSOLE_EXPLAIN_TOKEN, CASCADE_CONSOLE_PROMETHEUS_URL

Loopback by default; bound elsewhere it refuses to start without a token, and then every page
wants it (`?token=` once, kept as a cookie, or `authorization: Bearer`). A background thread
scrapes every service's metrics so the stack page covers the last minutes.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from app.console import pages, sources
from app.console.metrics import History
from app.console.settings import ConsoleSettings
from app.console.sources import Catalog, SourceError
from cascade.config import SettingsError, load_settings
from cascade.server import write_port_file

log = logging.getLogger(__name__)
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TOKEN_COOKIE = "cascade_console_token"
MAX_COUNT = 50


class TokenCheck(BaseHTTPMiddleware):
    """Every page wants the token when one is set (a console bound beyond loopback)."""

    def __init__(self, app: Any, token: str):
        super().__init__(app)
        self.token = token.encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path == "/healthz":
            return await call_next(request)
        header = request.headers.get("authorization", "")
        presented = [
            request.query_params.get("token", ""),
            request.cookies.get(TOKEN_COOKIE, ""),
            header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else "",
        ]
        if not any(hmac.compare_digest(p.encode(), self.token) for p in presented):
            return PlainTextResponse(
                "the console wants its token: open it with ?token=<CASCADE_CONSOLE_TOKEN>", 401
            )
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(
                TOKEN_COOKIE, request.query_params["token"], httponly=True, samesite="strict"
            )
        return response


def build_app(settings: ConsoleSettings, history: History | None = None) -> Starlette:
    catalog = Catalog(settings)
    history = history or History(settings.window_s, settings.scrape_every_s)

    def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        return TEMPLATES.TemplateResponse(
            request,
            template,
            {"page": template.removesuffix(".html"), **context},
            status_code=status,
        )

    def failed(request: Request, template: str, error: Exception, **context: Any) -> Response:
        return render(request, template, 200, error=str(error), **context)

    async def home(request: Request) -> Response:
        return RedirectResponse("/explain")

    def explain(request: Request) -> Response:
        user = request.query_params.get("user", "")
        count_text = request.query_params.get("count", "10")
        at = request.query_params.get("at", "")
        context: dict[str, Any] = {"user": user, "count": count_text, "at": at, "catalog": catalog}
        if not user:
            return render(request, "explain.html", **context)
        try:
            if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_COUNT:
                raise SourceError(f"count: a whole number from 1 to {MAX_COUNT}")
            context |= pages.explain_page(settings, catalog, user, int(count_text), at)
        except SourceError as error:
            return failed(request, "explain.html", error, **context)
        return render(request, "explain.html", **context)

    def item(request: Request) -> Response:
        text = request.query_params.get("id", "")
        context: dict[str, Any] = {"item_text": text, "catalog": catalog}
        if not text:
            return render(request, "item.html", **context)
        try:
            context |= pages.item_page(settings, catalog, text)
        except SourceError as error:
            return failed(request, "item.html", error, **context)
        return render(request, "item.html", **context)

    def stack(request: Request) -> Response:
        try:
            return render(request, "stack.html", **pages.stack_page(settings, history))
        except SourceError as error:
            return failed(request, "stack.html", error, rows=[])

    def experiments(request: Request) -> Response:
        return render(request, "experiments.html", **pages.experiments_page(settings, history))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("console page %s failed", request.url.path, exc_info=exc)
        return PlainTextResponse(
            "the console could not build this page; its log has the details", 500
        )

    middleware = [Middleware(TokenCheck, token=settings.token.reveal())] if settings.token else []
    return Starlette(
        routes=[
            Route("/", home),
            Route("/explain", explain),
            Route("/item", item),
            Route("/stack", stack),
            Route("/experiments", experiments),
            Route("/healthz", healthz),
        ],
        middleware=middleware,
        exception_handlers={Exception: server_error},
    )


def sample_forever(settings: ConsoleSettings, history: History, stop: threading.Event) -> None:
    """Scrapes every service's metrics each `scrape_every_s` (a stack that is down: nothing)."""
    while not stop.wait(settings.scrape_every_s):
        try:
            found = sources.endpoints(settings)
        except SourceError:
            continue
        history.record({e.name: e.metrics_url for e in found if e.metrics_url})


def serve(settings: ConsoleSettings) -> None:
    history = History(settings.window_s, settings.scrape_every_s)
    try:  # the window starts before the port is announced: a test's traffic comes after
        found = sources.endpoints(settings)
        history.record({e.name: e.metrics_url for e in found if e.metrics_url})
    except SourceError as error:
        log.warning("no stack yet: %s", error)
    stop = threading.Event()
    threading.Thread(target=sample_forever, args=(settings, history, stop), daemon=True).start()
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    port = sock.getsockname()[1]
    app = build_app(settings, history)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    if settings.port_file:
        write_port_file(Path(settings.port_file), port, None)
    print(f"console on http://{settings.host}:{port}/", flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The read-only web console.")
    parser.add_argument("--config", type=Path, help="a TOML file of console settings")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--run-dir", help="the local stack's run folder (default .cascade)")
    parser.add_argument("--simulation-dir", help="a simulation run folder (simulation.json)")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "run_dir": args.run_dir,
            "simulation_dir": args.simulation_dir,
        }.items()
        if v is not None
    }
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = load_settings(
            ConsoleSettings, args.config, env_prefix="CASCADE_CONSOLE_", overrides=overrides
        )
    except (SettingsError, ValueError) as error:
        print(f"console: {error}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
