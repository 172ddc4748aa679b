"""The ASGI application: routing for `/fhir/` and the openIMIS alias `/api/api_fhir_r4/`, authentication,
content negotiation and the mapping of every failure to an OperationOutcome."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, OperationalError

from hifhir.api import bundle, rest, terminology_routes
from hifhir.api.admin_routes import ADMIN_BASE, AdminApi
from hifhir.api.cors import Cors
from hifhir.api.http import (
    FHIR_JSON,
    JSON,
    BodyTooLarge,
    HttpRequest,
    HttpResponse,
    check_request_size,
    json_response,
    outcome_response,
    read_body,
    send_response,
)
from hifhir.audit import fhir as audit_fhir
from hifhir.audit.sink import AuditSink
from hifhir.auth import oauth
from hifhir.auth.sessions import Sessions
from hifhir.auth.throttle import LoginThrottle, address_key, client_address, policy_from_settings, user_key
from hifhir.auth.tokens import TokenService
from hifhir.auth.users import PrincipalCache, authenticate
from hifhir.config import PUBLIC_BASE_URL, Settings
from hifhir.fhir.capability import capability_statement
from hifhir.fhir.errors import FhirError, invalid
from hifhir.fhir.terminology import bind_engine
from hifhir.store.db import connection, hold, make_engine, reader, release

log = logging.getLogger("hifhir.api")

FHIR_BASE = "/fhir"
ALIAS_BASE = "/api/api_fhir_r4"
LOGIN_PATHS = {"/api/api_fhir_r4/login", "/api/login", "/fhir/login"}
TOKEN_PATHS = {oauth.TOKEN_PATH, FHIR_BASE + oauth.TOKEN_PATH}
SMART_CONFIG_PATHS = {"/.well-known/smart-configuration", FHIR_BASE + "/.well-known/smart-configuration",
                      ALIAS_BASE + "/.well-known/smart-configuration"}
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9a-fA-F:]+\](:\d{1,5})?$")
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
_FORMAT_OK = {"json", "application/json", "application/fhir+json", "fhir+json", "application/json+fhir"}
PING_BODY = b'{"status":"ok"}'
JOB_INTERVAL_S = 3600.0


class HifhirApp:
    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.database_url)
        self.reader = reader(self.engine)
        if not settings.jwt_secret:  # an HMAC with an empty key is a signature anybody can make
            raise ValueError("no JWT secret: set HIFHIR_JWT_SECRET or HIFHIR_JWT_SECRET_FILE")
        self.tokens = TokenService(settings.jwt_secret, settings.token_lifetime_s)
        self.principals = PrincipalCache(self.engine)
        self.sessions = Sessions(self.engine, self.tokens, self.principals)  # token → principal, revocations
        self.throttle = LoginThrottle(self.engine, policy_from_settings(settings))
        # audit/: the AuditEvent trail. On SQLite its writer gets a pool of its own with a small page cache: a
        # connection of the shared pool would grow its cache to 16 MB with audit pages (+16 MB per worker).
        self._audit_engine = (make_engine(settings.database_url, cache_kib=1024, pool_size=1)
                              if self.engine.dialect.name == "sqlite" else self.engine)
        self.audit = AuditSink(self._audit_engine, settings.trusted_proxies)
        self.cors = Cors(settings.cors_origins) if settings.cors_origins else None
        self._jobs: asyncio.Task[None] | None = None
        self._outbox: Any = None  # outbox.worker.Background when this process runs an outbox worker

    # --- ASGI entry point ------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw_headers = scope["headers"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        client = scope.get("client")
        request = HttpRequest(
            method=scope["method"],
            path=scope["path"],
            raw_query=scope["query_string"].decode("latin-1"),
            headers=headers,
            scheme=scope.get("scheme", "http"),
            host=client[0] if client else "unknown",
        )
        content_type = FHIR_JSON
        try:
            check_request_size(raw_headers, request.raw_query)
            if self.cors is not None and (preflight := self.cors.preflight(request.method, headers)) is not None:
                await send_response(send, preflight, extra=self.cors.headers(headers.get("origin")))
                return
            content_type = self._response_type(request)
            if request.method in ("POST", "PUT", "PATCH"):
                request.body = await read_body(receive, self.settings.max_body_bytes,
                                               headers.get("content-length"))
            response = self._dispatch(request, content_type)
        except FhirError as exc:
            response = outcome_response(exc, content_type)
        except BodyTooLarge:
            too_large = f"Request body larger than {self.settings.max_body_bytes} bytes"
            response = outcome_response(FhirError.one(413, "too-costly", too_large), content_type)
        except DataError:
            response = outcome_response(invalid("A value is out of range or too long for its field"),
                                        content_type)
        except OperationalError:
            log.exception("database unavailable")
            response = outcome_response(
                FhirError.one(503, "transient", "Database busy or unavailable; retry"), content_type)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = outcome_response(FhirError.one(500, "exception", "Internal server error"),
                                        content_type)
        self.audit.observe(request, response)
        await send_response(send, response, https=request.scheme == "https",
                            extra=self.cors.headers(headers.get("origin")) if self.cors is not None else None)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                from hifhir.fhir.registry import ALL_KINDS
                from hifhir.fhir.validate import warm_up

                # Compile the profiles clients write now rather than inside the first requests (only those:
                # read-only kinds are never validated on input, and each compiled profile costs every worker
                # ~1 MB; `$validate` of another profile compiles it on first use).
                warm_up([k.profile for k in ALL_KINDS if k.writable and k.profile])
                # Requests run one after another on this thread: it keeps its connections (store.db.hold).
                hold(self.engine, self.reader)
                self._jobs = asyncio.get_running_loop().create_task(self._run_jobs())
                if self.settings.outbox.in_app:
                    from hifhir.outbox.worker import start_background

                    # One outbox worker per served process (claim-AI deliveries): `make run` needs no second command.
                    self._outbox = start_background(self.engine, self.settings.outbox)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._jobs is not None:
                    self._jobs.cancel()
                if self._outbox is not None:
                    # the batch in hand is finished and recorded first (bounded by the handlers' timeouts)
                    await asyncio.get_running_loop().run_in_executor(None, self._outbox.stop)
                    self._outbox = None
                release(self.engine, self.reader)
                self.audit.close()  # what is queued is written before the pool goes
                self._audit_engine.dispose()
                self.engine.dispose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _run_jobs(self) -> None:
        """Calendar-driven work (jobs.py) at start and then hourly, off the event loop."""
        from hifhir.jobs import refresh_coverage_flags

        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, refresh_coverage_flags, self.engine)
            except Exception:  # a failed run is retried at the next tick; requests are unaffected
                log.exception("periodic job failed")
            await asyncio.sleep(JOB_INTERVAL_S)

    # --- routing ---------------------------------------------------------------------------------------

    def _dispatch(self, request: HttpRequest, content_type: str) -> HttpResponse:
        path = request.path.rstrip("/") or "/"
        if path == "/healthz":
            return HttpResponse(200, PING_BODY, JSON)
        if path in LOGIN_PATHS:
            return self._login(request)
        if path in TOKEN_PATHS:
            return self._oauth_token(request)
        if path in SMART_CONFIG_PATHS:
            self._only(request.method, "GET")
            return json_response(200, oauth.smart_configuration(self._base_url(request, "")), JSON)
        if path.startswith(ADMIN_BASE + "/"):
            admin_api = AdminApi(self.engine, self._authenticate(request), self.settings.password_min_length,
                                 self.sessions.forget)
            return admin_api.handle(request.method, [unquote(s) for s in path[len(ADMIN_BASE):].split("/") if s],
                                    request.body)
        if path == FHIR_BASE or path.startswith(FHIR_BASE + "/"):
            prefix, lenient = FHIR_BASE, False
        elif path == ALIAS_BASE or path.startswith(ALIAS_BASE + "/"):
            prefix, lenient = ALIAS_BASE, True
        else:
            raise FhirError.one(404, "not-found", "Unknown path; the FHIR base is /fhir/")
        segments = [unquote(s) for s in path[len(prefix):].split("/") if s]
        base_url = self._base_url(request, prefix)
        method = request.method
        if segments == ["metadata"]:
            self._only(method, "GET")
            return json_response(200, capability_statement(base_url), content_type)
        call = rest.Call(
            engine=self.engine,
            reader=self.reader,
            settings=self.settings,
            base_url=base_url,
            principal=self._authenticate(request),
            lenient=lenient,
            content_type=content_type,
        )
        self._apply_prefer(call, request)
        call.if_match = request.headers.get("if-match")
        # Lets the profile validator see the live code lists of this database (fhir/terminology.py).
        bind_engine(self.reader)
        n = len(segments)
        if n == 0:
            if method != "POST":
                raise FhirError.one(404, "not-supported", "At the base: POST a transaction or batch Bundle")
            self._check_body_type(request)
            return bundle.process(call, request.body)
        rtype = segments[0]
        if rtype == "AuditEvent":
            return audit_fhir.route(call, request, segments[1:], self.audit)
        if rtype in terminology_routes.TYPES:
            return self._terminology(call, request, segments)
        if n == 1:
            if method == "GET":
                return rest.search(call, rtype, request.query)
            if method == "POST":
                self._check_body_type(request)
                return rest.create(call, rtype, request.body, request.headers.get("if-none-exist"))
            if method == "PUT" and request.raw_query:
                self._check_body_type(request)
                return rest.conditional_update(call, rtype, request.raw_query, request.body)
            raise self._method_not_allowed(method)
        second = segments[1]
        if n == 2 and second == "_search":
            self._only(method, "POST")
            return rest.search(call, rtype, request.query + self._form_params(request))
        if n == 2 and second == "_history":
            self._only(method, "GET")
            return rest.history(call, rtype, None, request.query)
        if n == 2 and second == "$validate":
            self._only(method, "POST")
            self._check_body_type(request)
            return rest.validate_operation(call, rtype, None, request.body)
        if n == 2:
            if method == "GET":
                return rest.read(call, rtype, second)
            if method == "PUT":
                self._check_body_type(request)
                return rest.update_resource(call, rtype, second, request.body)
            if method == "DELETE":
                return rest.delete(call, rtype, second)
            raise self._method_not_allowed(method)
        third = segments[2]
        if n == 3 and third == "_history":
            self._only(method, "GET")
            return rest.history(call, rtype, second, request.query)
        if n == 3 and third == "$photo" and rtype == "Patient":
            self._only(method, "GET")
            return rest.patient_photo(call, second)
        if n == 3 and third == "$validate":
            self._only(method, "POST")
            self._check_body_type(request)
            return rest.validate_operation(call, rtype, second, request.body)
        if n == 4 and third == "_history":
            self._only(method, "GET")
            return rest.read(call, rtype, second, segments[3])
        raise FhirError.one(404, "not-found", "Unknown FHIR path")

    def _terminology(self, call: rest.Call, request: HttpRequest, segments: list[str]) -> HttpResponse:
        """CodeSystem, ValueSet, StructureDefinition, ImplementationGuide: built on the fly, not kinds."""
        routes = terminology_routes
        method, rtype, n = request.method, segments[0], len(segments)
        operations = routes.OPERATIONS.get(rtype, frozenset())
        if "_history" in segments:
            raise FhirError.one(404, "not-supported", f"{rtype} is built from configuration: it keeps no history")
        if n == 1:
            self._only(method, "GET")
            return routes.search(call, rtype, request.query)
        second = segments[1]
        if n == 2 and second == "_search":
            self._only(method, "POST")
            return routes.search(call, rtype, request.query + self._form_params(request))
        op = second if n == 2 else segments[2] if n == 3 else None
        if op is not None and op.startswith("$"):
            if op not in operations:
                raise FhirError.one(404, "not-supported", f"{rtype} has no operation {op[:40]}")
            if method not in ("GET", "POST"):
                raise self._method_not_allowed(method, "GET, POST")
            if method == "POST":
                self._check_body_type(request)
            return routes.operation(call, rtype, second if n == 3 else None, op, request.query,
                                    request.body if method == "POST" else None)
        if n == 2:
            if method == "GET":
                return routes.read(call, rtype, second)
            if method == "PUT":
                self._check_body_type(request)
                return routes.update(call, rtype, second, request.body)
            raise self._method_not_allowed(method, "GET, PUT" if rtype == "CodeSystem" else "GET")
        raise FhirError.one(404, "not-found", "Unknown FHIR path")

    # --- cross-cutting concerns ------------------------------------------------------------------------

    def _authenticate(self, request: HttpRequest) -> Any:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        principal = self.sessions.principal(token.strip()) if scheme.lower() == "bearer" and token else None
        if principal is None:
            raise FhirError(
                401,
                [{"severity": "error", "code": "login", "diagnostics": "A valid bearer token is required"}],
                {"WWW-Authenticate": 'Bearer realm="hifhir"'},
            )
        request.principal = principal  # the audit trail's "who", also when the interaction is refused
        return principal

    def _login(self, request: HttpRequest) -> HttpResponse:
        self._only(request.method, "POST")
        try:
            payload = orjson.loads(request.body or b"{}")
        except orjson.JSONDecodeError:
            payload = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        if not isinstance(payload, dict):
            raise invalid("Login takes a JSON object {\"username\", \"password\"}")
        username, password = payload.get("username"), payload.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
            raise invalid("Missing username or password")
        username = username[:50]
        address = client_address(request.host, request.headers.get("x-forwarded-for"),
                                 self.settings.trusted_proxies)
        try:
            counted = self.throttle.check([user_key(username), address_key(address)])
        except FhirError as exc:  # locked out: the attempt is in the trail all the same
            self.audit.authentication(request, exc.status, username=username)
            raise
        with connection(self.engine) as conn:
            ok = authenticate(conn, username, password[:200])
        if not ok:
            self.throttle.failed(username, address)
            self.audit.authentication(request, 401, username=username)
            raise FhirError.one(401, "login", "INCORRECT_CREDENTIALS")
        self.audit.authentication(request, 200, username=username)
        if user_key(username) in counted:
            self.throttle.succeeded(username)
        token, exp = self.tokens.issue(username)
        return json_response(200, {"token": token, "exp": exp}, JSON)

    def _oauth_token(self, request: HttpRequest) -> HttpResponse:
        self._only(request.method, "POST")
        root = self._base_url(request, "")
        public_root = PUBLIC_BASE_URL.removesuffix(FHIR_BASE)
        # The assertion's audience: the endpoint as this request reached it, or as the public base URL names it.
        audiences = {r + path for r in (root, public_root) for path in TOKEN_PATHS}
        address = client_address(request.host, request.headers.get("x-forwarded-for"), self.settings.trusted_proxies)
        try:
            try:
                self.throttle.check([address_key(address)])  # failed client authentications, as failed logins
            except FhirError as exc:
                raise oauth.throttled(exc.headers) from None
            form = oauth.parse_form(request.headers.get("content-type"), request.body)
            grant = oauth.issue_token(self.engine, self.tokens, form, request.headers.get("authorization"),
                                      audiences=audiences, lifetime_s=self.settings.client_token_lifetime_s)
        except oauth.OAuthError as exc:
            if exc.error == "invalid_client":
                self.throttle.failed(None, address)
            claimed = oauth.claimed_client_id(request.headers.get("authorization"), request.body)
            self.audit.authentication(request, exc.status, client_id=claimed)
            return json_response(exc.status, exc.payload(), JSON, **oauth.NO_STORE, **exc.headers)
        self.audit.authentication(request, 200, username=grant.username, client_id=grant.client_id)
        return json_response(200, grant.payload(), JSON, **oauth.NO_STORE)

    def _base_url(self, request: HttpRequest, prefix: str) -> str:
        host = request.headers.get("host", "")
        if not _HOST_RE.match(host):
            host = f"{self.settings.host}:{self.settings.port}"
        return f"{request.scheme}://{host}{prefix}"

    def _response_type(self, request: HttpRequest) -> str:
        fmt = None
        if "_format" in request.raw_query:
            fmt = request.query_value("_format")
        if fmt is not None:
            wanted = _media_type(fmt)
            if wanted not in _FORMAT_OK:
                raise FhirError.one(406, "not-supported", "Only JSON is supported (_format=json)")
            return JSON if wanted == JSON else FHIR_JSON
        accept = request.headers.get("accept", "")
        if accept:
            kinds = [_media_type(a) for a in accept.split(",")]
            if not any(k in _JSON_TYPES or k in ("*/*", "application/*") for k in kinds):
                raise FhirError.one(406, "not-supported", "Only application/fhir+json and application/json "
                                    "are supported")
            if "application/json" in kinds and "application/fhir+json" not in kinds:
                return JSON
        return FHIR_JSON

    @staticmethod
    def _check_body_type(request: HttpRequest) -> None:
        ctype = request.headers.get("content-type")
        if ctype is not None and _media_type(ctype) not in _JSON_TYPES:
            raise FhirError.one(415, "not-supported", "Send application/fhir+json or application/json")

    @staticmethod
    def _form_params(request: HttpRequest) -> list[tuple[str, str]]:
        ctype = request.headers.get("content-type", "")
        if not request.body:
            return []
        if _media_type(ctype) != "application/x-www-form-urlencoded":
            raise FhirError.one(415, "not-supported", "POST _search takes application/x-www-form-urlencoded")
        try:
            return parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
        except (UnicodeDecodeError, ValueError):
            raise invalid("Malformed form body") from None

    @staticmethod
    def _apply_prefer(call: rest.Call, request: HttpRequest) -> None:
        prefer = request.headers.get("prefer")
        if not prefer:
            return
        for part in prefer.split(","):
            for token in part.split(";"):
                key, _, value = token.strip().partition("=")
                value = value.strip().strip('"')
                if key == "return" and value in ("minimal", "representation", "OperationOutcome"):
                    call.prefer_return = value
                elif key == "handling" and value in ("strict", "lenient"):
                    call.strict_handling = value == "strict"

    @staticmethod
    def _only(method: str, allowed: str) -> None:
        if method != allowed:
            raise HifhirApp._method_not_allowed(method, allowed)

    @staticmethod
    def _method_not_allowed(method: str, allowed: str = "") -> FhirError:
        return FhirError(405, [{"severity": "error", "code": "not-supported",
                                "diagnostics": f"Method {method[:10]} not allowed here"}],
                         {"Allow": allowed} if allowed else {})


def _media_type(value: str) -> str:
    """`Application/FHIR+JSON; charset=utf-8` → `application/fhir+json` (media types ignore case)."""
    return value.split(";")[0].strip().lower()


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> HifhirApp:
    from hifhir.config import load_settings

    return HifhirApp(settings or load_settings(), engine)
