"""The dispatchers' web console, served by the hub (Starlette).

- `/` the live queue across all stations (most urgent class first, then oldest), each row
  with its class written out (never colour alone), age, state, station, place, presses,
  requested response and team, and acknowledge / assign (team, ETA) / resolve buttons; the
  stations' health below. The page follows the hub's database through server-sent events
  (`/api/stream`: one "changed" each time a batch is committed) and plays a tone and flashes
  the title for a new P0 or P1.
- Commands (`POST /api/command`) go to the station over the hub's MQTT session (the dispatch
  certificate) and wait for the station's reply; each is written to `command_audit` with the
  operator who sent it, and carries the operator's id as `dispatcher`.
- `/api/alerts/STATION/ALERT` one alert's timeline: its state changes with their times and
  every event about it (class, presses, evidence, the dispatcher's desk, team), shown when a
  row's Details button is pressed.
- No anonymous use: operators log in with a password (argon2 hashes, `stationgw hub
  operator add`), or a trusted reverse proxy that authenticated them names them in a header
  (`trusted_header`, believed only from the `trusted_proxies` addresses); sessions are
  signed cookies (SameSite=Strict, HttpOnly); every POST needs the session's CSRF token.
- `/hotspots?since=90d` the hotspot analysis of a period before now: the same views as
  `stationgw hub report` (heat maps, service figures, concentration, the Gi* hotspot map,
  recommendations), with small cells suppressed as in every export (`dispatch.analysis`,
  computed in a worker thread and kept for a short time; pandas and the rest load on the
  first request for the page, never at the hub's start). Its figures are drawn in the
  browser by `/hotspots/figures.js` (plotly.js, cached a day; it holds no data).
- CAP 1.2 for a CAD (`/cap/feed?after=N`, an Atom feed with the messages inline, and
  `/cap/messages/IDENTIFIER.xml`): for a logged-in operator, or a CAD sending
  `Authorization: Bearer TOKEN` (`cap_token`).
"""

from __future__ import annotations

import asyncio
import functools
import html
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from dispatch.analysis.console import (
    DEFAULT_PERIOD,
    PERIODS,
    HotspotSource,
    HotspotViews,
    View,
    period,
)
from dispatch.console.options import TEAMS
from dispatch.errors import AnalysisError, CommandError, InputError
from dispatch.hub.capfeed import CAP_TYPE, atom_feed
from dispatch.hub.commands import Commander
from dispatch.hub.store import HubStore
from dispatch.inbound import printable
from dispatch.outbound import make_command
from gateway.core.commands import Command

HASHER = PasswordHasher()
PAGE = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")
HOTSPOTS_PAGE = (Path(__file__).parent / "hotspots.html").read_text(encoding="utf-8")
#: Where the hotspots page loads what draws its figures from.
FIGURES_SCRIPT = "/hotspots/figures.js"
ACTIONS = ("acknowledge", "assign", "resolve")


def hash_password(password: str) -> str:
    """An argon2 hash for `operators.password_hash`."""
    return HASHER.hash(password)


def _csrf(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


@dataclass(frozen=True)
class ProxyLogin:
    """Operators named by a reverse proxy that authenticated them (single sign-on): the
    header it sets, and the addresses it connects from (the header is ignored from any
    other peer, so a client cannot name itself)."""

    header: str
    proxies: frozenset[str] = frozenset({"127.0.0.1", "::1"})


def _user(request: Request, proxy: ProxyLogin | None = None) -> str | None:
    if proxy is not None and request.client is not None and (
            request.client.host in proxy.proxies):
        named = printable(request.headers.get(proxy.header, "")).strip()[:64]
        if named:
            if request.session.get("user") != named:
                request.session.clear()
                request.session["user"] = named
            return named
    user = request.session.get("user")
    return user if isinstance(user, str) else None


def _login_page(request: Request, message: str = "", status: int = 200) -> HTMLResponse:
    note = f'<p role="alert" class="err">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Dispatch: log in"
        "</title></head><body><h1>Dispatch console</h1>" + note +
        '<form method=post action="/login">'
        f'<input type=hidden name=csrf value="{_csrf(request)}">'
        '<label>Operator <input name=username id=username autocomplete=username></label> '
        '<label>Password <input name=password id=password type=password '
        'autocomplete=current-password></label> <button id=login type=submit>Log in</button>'
        "</form></body></html>", status_code=status)


def _row(alert: dict[str, Any], now: float) -> dict[str, Any]:
    return {
        "station": printable(alert["station"]), "alert_id": printable(alert["alert_id"]),
        "class": alert["class"], "state": alert["state"],
        "age_s": max(0.0, now - float(alert["opened_at"])),
        "place": printable(alert["location"] or alert["source"]),
        "source": printable(alert["source"]),
        "requested_response": alert["requested_response"], "team": alert["team"],
        "eta_s": alert["eta_s"], "escalations": alert["escalations"],
        "press_count": alert["press_count"],
    }


def _timeline_event(event: dict[str, Any]) -> dict[str, Any]:
    body = event["body"] if isinstance(event["body"], dict) else {}
    evidence = body.get("evidence")
    return {
        "seq": event["seq"], "kind": printable(event["kind"]), "class": event["class"],
        "at": event["wall_time"], "state": printable(str(body.get("state", ""))),
        "press_count": body.get("press_count"),
        "evidence": [printable(str(e)) for e in evidence] if isinstance(evidence, list) else [],
        "dispatcher": printable(str(body.get("dispatcher", ""))),
        "team": printable(str(body.get("team", ""))), "held": body.get("held") is True,
    }


def _fill(template: str, values: dict[str, str]) -> str:
    """`{{name}}` replaced by values[name], in one pass (a value is never read again)."""
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


def _hotspots_page(request: Request, operator: str, since: str, view: View | None, *,
                   kept_s: float = 0.0, message: str = "", status: int = 200) -> HTMLResponse:
    computed = body = style = script = ""
    if view is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(view.until))
        computed = (f"Computed at {stamp} in {view.seconds:.1f} s, and shown for "
                    f"{kept_s:.0f} s after that: a reload within it shows the same figures.")
        body, style = view.parts.body, view.parts.style
        # Deferred: it runs once the page (the figures' JSON with it) is parsed.
        script = f'<script defer src="{FIGURES_SCRIPT}"></script>'
    return HTMLResponse(_fill(HOTSPOTS_PAGE, {
        "csrf": _csrf(request), "user": html.escape(operator), "style": style,
        "since": html.escape(since, quote=True),
        "periods": "".join(f'<option value="{p}">' for p in PERIODS),
        "message": f'<p role="alert" class="err">{html.escape(message)}</p>' if message
        else "", "computed": html.escape(computed), "body": body, "script": script,
    }), status_code=status, headers={"Cache-Control": "no-store"})


def _station_row(s: dict[str, Any], now: float, silent_after_s: float) -> dict[str, Any]:
    """A station's line in the console: status, silence by the hub's clock, health."""
    health = s["health"] or {}
    heard = s["heard_at"]
    return {
        "station": printable(s["station"]), "status": s["status"],
        "silent": heard is None or now - float(heard) > silent_after_s,
        "heard_s": None if heard is None else max(0.0, now - float(heard)),
        "faults": [printable(f.get("code", "")) for f in health.get("faults", [])
                   if isinstance(f, dict)],
        "outbox_rows": (health.get("outbox") or {}).get("rows"),
        "links": health.get("links", {}),
    }


def _command(body: Any, operator: str) -> Command:
    """The command a POST asks for, from `operator`; ValueError, KeyError or TypeError says
    what is wrong with it."""
    action = body["action"]
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    eta = body.get("eta_min")
    return make_command(
        str(body["station"]), str(body["alert_id"]), action, team=body.get("team"),
        eta_s=None if eta in (None, "") else round(float(eta) * 60),
        dispatcher=f"web:{operator}"[:64])


class _Console:
    """The console's pages and API over one hub's store and MQTT commander."""

    def __init__(self, store: HubStore, commander: Commander, changed: asyncio.Event, *,
                 proxy: ProxyLogin | None, cap_token: str | None, cap_sender: str,
                 silent_after_s: float, cap_push: bool,
                 hotspots: HotspotSource | None) -> None:
        self.store = store
        self.commander = commander
        self.changed = changed
        self.proxy = proxy
        self.cap_token = cap_token
        self.cap_sender = cap_sender
        self.silent_after_s = silent_after_s
        self.cap_push = cap_push
        self.views = HotspotViews(store.engine, hotspots)
        self._version = 0  # commits seen by `_watch`
        self._commits = asyncio.Condition()
        self._watcher: asyncio.Task[None] | None = None
        self._streams = 0


    def user(self, request: Request) -> str | None:
        return _user(request, self.proxy)

    def may_read_cap(self, request: Request) -> bool:
        offered = request.headers.get("authorization", "")
        if self.cap_token and secrets.compare_digest(offered.encode(),
                                                f"Bearer {self.cap_token}".encode()):
            return True
        return self.user(request) is not None

    async def index(self, request: Request) -> Response:
        if self.user(request) is None:
            return RedirectResponse("/login", status_code=303)
        page = PAGE.replace("{{csrf}}", _csrf(request)).replace(
            "{{user}}", html.escape(self.user(request) or ""))
        return HTMLResponse(page.replace("{{teams}}", json.dumps(list(TEAMS))))

    async def hotspots_page(self, request: Request) -> Response:
        operator = self.user(request)
        if operator is None:
            return RedirectResponse("/login", status_code=303)
        since = printable(request.query_params.get("since", DEFAULT_PERIOD)).strip()[:32]
        try:
            length = period(since)
        except InputError as exc:
            return _hotspots_page(request, operator, since, None, message=str(exc),
                                  status=400)
        try:
            view = await self.views.view(length)
        except AnalysisError as exc:
            return _hotspots_page(request, operator, since, None,
                                  message=f"the analysis failed: {exc}", status=503)
        return _hotspots_page(request, operator, since, view, kept_s=self.views.source.ttl_s)

    async def hotspots_script(self, request: Request) -> Response:
        """plotly.js and the lines that draw the hotspots page's figures (no data in it:
        the figures' numbers are in the page, behind the login)."""
        return Response(await self.views.script(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return _login_page(request)
        form = await request.form()
        if form.get("csrf") != request.session.get("csrf"):
            return _login_page(request, "the form expired: log in again", 403)
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        stored = await asyncio.to_thread(self.store.operator_hash, username)
        try:
            ok = stored is not None and HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok:
            return _login_page(request, "unknown operator or wrong password", 401)
        request.session.clear()
        request.session["user"] = username
        _csrf(request)
        return RedirectResponse("/", status_code=303)

    async def logout(self, request: Request) -> Response:
        if request.headers.get("x-csrf-token") == request.session.get("csrf"):
            request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def api_alerts(self, request: Request) -> Response:
        if self.user(request) is None:
            return JSONResponse({"error": "log in"}, status_code=401)
        return JSONResponse(await asyncio.to_thread(self._queue))

    def _queue(self) -> dict[str, Any]:
        """What the queue page shows: open alerts, stations, the CAP push backlog."""
        now = time.time()
        rows = [_row(a, now) for a in self.store.open_alerts()]
        stations = [_station_row(s, now, self.silent_after_s) for s in self.store.station_rows()]
        backlog = self.store.push_backlog() if self.cap_push else {"pending": 0}
        return {"alerts": rows, "stations": stations, "now": now, "cap_push": {
            **backlog, "error": printable(str(backlog.get("error") or ""))}}

    def _newer_than(self, version: int) -> bool:
        return self._version != version

    async def _watch(self) -> None:
        """The one reader of `changed`: counts the hub's commits for every event stream (each
        stream clearing the shared event itself could make another miss a change)."""
        while True:
            await self.changed.wait()
            self.changed.clear()
            async with self._commits:
                self._version += 1
                self._commits.notify_all()

    async def api_alert(self, request: Request) -> Response:
        if self.user(request) is None:
            return JSONResponse({"error": "log in"}, status_code=401)
        station, alert_id = request.path_params["station"], request.path_params["alert_id"]
        alert = await asyncio.to_thread(self.store.alert, station, alert_id)
        if alert is None:
            return JSONResponse({"error": "no such alert"}, status_code=404)
        history = await asyncio.to_thread(self.store.history, station, alert_id)
        timeline = await asyncio.to_thread(self.store.timeline, station, alert_id)
        audit = [a for a in await asyncio.to_thread(self.store.audit_log)
                 if a["station"] == station and a["alert_id"] == alert_id]
        return JSONResponse({
            "alert": _row(alert, time.time()),
            "transitions": [{"state": state, "at": at} for state, at in history],
            "events": [_timeline_event(e) for e in timeline],
            "commands": [{"at": a["at"], "operator": printable(a["operator"]),
                          "action": a["action"], "outcome": a["outcome"],
                          "reason": a["reason"]} for a in audit],
        })

    async def cap_feed(self, request: Request) -> Response:
        if not self.may_read_cap(request):
            return Response("log in, or send the CAD's bearer token", status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            return Response("after must be a number (the previous page's last entry)",
                            status_code=400)
        rows = await asyncio.to_thread(self.store.cap_feed, after, 100)
        base = str(request.base_url).rstrip("/")
        return Response(atom_feed(rows, base=base, sender=self.cap_sender),
                        media_type="application/atom+xml")

    async def cap_message(self, request: Request) -> Response:
        if not self.may_read_cap(request):
            return Response("log in, or send the CAD's bearer token", status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
        xml = await asyncio.to_thread(self.store.cap_message, request.path_params["identifier"])
        if xml is None:
            return Response("no such message", status_code=404)
        return Response(xml, media_type=CAP_TYPE)

    async def api_stream(self, request: Request) -> Response:
        if self.user(request) is None:
            return JSONResponse({"error": "log in"}, status_code=401)

        async def events() -> AsyncIterator[bytes]:
            # The queue itself after each commit (newest only: commits that came while one
            # was read are one read), so a new alert needs no second round trip.
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.create_task(self._watch(), name="web.watch")
            self._streams += 1
            seen = -1
            try:
                while not await request.is_disconnected():
                    if seen != self._version:
                        seen = self._version
                        queue = await asyncio.to_thread(self._queue)
                        yield b"data: " + json.dumps(queue).encode() + b"\n\n"
                        continue
                    try:
                        async with asyncio.timeout(15), self._commits:
                            await self._commits.wait_for(functools.partial(
                                self._newer_than, seen))
                    except TimeoutError:
                        yield b": keepalive\n\n"
            finally:
                self._streams -= 1
                if not self._streams and self._watcher is not None:
                    self._watcher.cancel()  # no one is watching: nothing to count
                    self._watcher = None

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    async def api_command(self, request: Request) -> Response:
        operator = self.user(request)
        if operator is None:
            return JSONResponse({"error": "log in"}, status_code=401)
        if request.headers.get("x-csrf-token") != request.session.get("csrf"):
            return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
        try:
            command = _command(await request.json(), operator)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad command: {exc}"}, status_code=400)
        entry = {"operator": operator, "station": command.station, "alert_id": command.alert_id,
                 "action": command.action, "team": command.team, "eta_s": command.eta_s,
                 "command_id": command.command_id}
        try:
            reply = await self.commander.send(command)
        except CommandError as exc:
            await asyncio.to_thread(self.store.audit, **entry, outcome="no_reply",
                                    detail=str(exc)[:300])
            return JSONResponse({"status": "no_reply", "detail": str(exc)}, status_code=504)
        await asyncio.to_thread(self.store.audit, **entry, outcome=reply.status,
                                reason=reply.reason, detail=reply.detail[:300])
        return JSONResponse({"status": reply.status, "reason": reply.reason,
                             "detail": printable(reply.detail)})

    def routes(self) -> list[Route]:
        """Every page and API route."""
        return [
            Route("/", self.index),
            Route("/hotspots", self.hotspots_page),
            Route(FIGURES_SCRIPT, self.hotspots_script),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/api/alerts", self.api_alerts),
            Route("/api/alerts/{station}/{alert_id}", self.api_alert),
            Route("/cap/feed", self.cap_feed),
            Route("/cap/messages/{identifier}.xml", self.cap_message),
            Route("/api/stream", self.api_stream),
            Route("/api/command", self.api_command, methods=["POST"]),
        ]


def create_app(store: HubStore, commander: Commander, changed: asyncio.Event, *,
               secret: str, https_only: bool = False, proxy: ProxyLogin | None = None,
               cap_token: str | None = None, cap_sender: str = "stationgw-hub@localhost",
               silent_after_s: float = 90.0, cap_push: bool = False,
               hotspots: HotspotSource | None = None) -> Starlette:
    """The web console over one hub's store and MQTT commander. A station not heard from
    for `silent_after_s` (the hub's clock) is shown as silent; with `cap_push`, the CAP
    messages not yet taken by the CAD are shown; `hotspots` says what the hotspots page is
    computed from (default: the shipped simulated metro, k = 5)."""
    console = _Console(store, commander, changed, proxy=proxy, cap_token=cap_token,
                       cap_sender=cap_sender, silent_after_s=silent_after_s,
                       cap_push=cap_push, hotspots=hotspots)
    return Starlette(
        routes=console.routes(),
        middleware=[Middleware(SessionMiddleware, secret_key=secret, same_site="strict",
                               https_only=https_only, max_age=12 * 3600)],
    )
