"""Property-based fuzzing of the whole API, generated from its CapabilityStatement.

Every resource type, interaction, search parameter, include and operation `GET /fhir/metadata` declares is drawn
with hostile values (SQL and script injection, huge numbers, unicode, impossible dates, unknown prefixes, modifiers
and chains, `_include` junk), reads and vreads of random ids, creates and updates with mutated IG examples and stored
resources (wrong types, unknown fields, deep nesting, huge arrays) or malformed JSON, Bundles, random methods,
paths and headers, the administration API and the OAuth2 token endpoint — on the demo scheme, as users of different
rights and as a system client.

The properties: never a 5xx; every error is an OperationOutcome whose text leaks no internals (SQL, table or
constraint names, stack traces, file paths); a refused write writes nothing. Hypothesis runs derandomized with no
example database (reproducible in CI, nothing written to the repository); the bulk runs on SQLite, a smaller share on
PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import string
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus, urlencode

import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from hifhir.api.app import HifhirApp
from hifhir.auth import admin, clients
from hifhir.config import Settings
from hifhir.demo import load_demo_scheme
from hifhir.store.db import transaction
from hifhir.store.tables import metadata, resource_version
from tests.conftest import ADMIN, CLERK, EXAMPLES, NOBODY, _reset

# Hypothesis keeps caches (unicode tables, constants found in the code) in its home directory, ./.hypothesis by
# default — in the repository: a temporary directory instead. No example database either (settings below).
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "hifhir-hypothesis")

# Per property and backend; HIFHIR_FUZZ_EXAMPLES overrides both (a longer hunt, or a quick iteration).
EXAMPLES_PER_TEST = {"sqlite": 600, "postgresql": 120}
if os.environ.get("HIFHIR_FUZZ_EXAMPLES"):
    EXAMPLES_PER_TEST = dict.fromkeys(EXAMPLES_PER_TEST, int(os.environ["HIFHIR_FUZZ_EXAMPLES"]))
# Derandomized (the same cases on every run) unless HIFHIR_FUZZ_SEED asks for another set of cases.
SEED = int(os.environ["HIFHIR_FUZZ_SEED"]) if os.environ.get("HIFHIR_FUZZ_SEED") else None

# --- what a response must never contain ----------------------------------------------------------------------------

_SNAKE_TABLES = sorted(t.name for t in metadata.sorted_tables if "_" in t.name)
LEAK = re.compile(
    r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|WHERE|JOIN)\b|sqlalchemy|psycopg|sqlite3|Traceback|"
    r'File "|\.py\b|/work/|site-packages|IntegrityError|DataError|ProgrammingError|OperationalError|'
    r"violates|constraint|UNIQUE|FOREIGN KEY|\buq_\w+|\bfk_\w+|\bix_\w+|"
    r"\b(" + "|".join(map(re.escape, _SNAKE_TABLES)) + r")\b")


def assert_sound(resp: Any, method: str, sent: str, what: object) -> None:
    """No 5xx; an error is an OperationOutcome that leaks nothing — but what the client sent, echoed back."""
    assert resp.status_code < 500, (what, resp.status_code, resp.text[:500])
    if resp.status_code < 400 or method == "HEAD":
        return
    assert resp.headers.get("content-type", "").startswith(("application/fhir+json", "application/json")), what
    body = resp.json()
    assert body.get("resourceType") == "OperationOutcome", (what, resp.text[:500])
    assert body.get("issue"), (what, resp.text[:500])
    leaks = [m.group(0) for m in LEAK.finditer(resp.text) if m.group(0) not in sent]
    assert not leaks, (what, leaks, resp.text[:500])


# --- hostile values ------------------------------------------------------------------------------------------------

HOSTILE = [
    "' OR '1'='1", "1; DROP TABLE insuree;--", '" OR 1=1 --', "') UNION SELECT password_hash FROM app_user--",
    "<script>alert(1)</script>", "javascript:alert(1)", "${jndi:ldap://x/a}", "{{7*7}}", "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd", "\x00", "a\x00b", "\u202e\u200b", "😀", "Ω≈ç√∫", "ＡＢＣ", "a" * 300, "9" * 40, "-1",
    "0", "1e309", "-1e309", "NaN", "Infinity", "2147483648", "9223372036854775808", "-9223372036854775809",
    "0x7fffffff", "1.5", "null", "true", "[]", "{}", "*", "%", "_", "\\", "'", '"', ";", ",", ",,", "|", "$", "@", "",
    " ", "2020-13-45", "2020-02-30", "2020-02-30T25:61:61Z", "9999-12-31T23:59:59+14:00", "0000-00-00", "-2020",
    "2020-01-01T00:00:00+99:99", "1970", "20201", "2020-1-1", "2020-01-01T10:00", "99999-01-01",
    "urn:uuid:00000000-0000-0000-0000-000000000000", "http://evil.example/Patient/1", "Patient/", "/Patient/x",
    "Patient/../../x", "http://hl7.org/fhir/sid/us-ssn|", "|", "||", "|x|y", "a|", "%27", "%00", "+", "&", "=",
]
PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "xx", "EQ", "gtgt"]
MODIFIERS = ["", "exact", "contains", "missing", "not", "text", "above", "below", "in", "not-in", "of-type",
             "identifier", "Patient", "Location", "iterate", "x", "%00", "exact:exact"]
RESULT_PARAMS = ["_count", "_sort", "_total", "_summary", "_elements", "_cursor", "_format", "_pretty", "_include",
                 "_revinclude", "_include:iterate", "_revinclude:iterate", "_has", "_id", "_lastUpdated", "_since",
                 "_type", "_query", "_content", "_text", "_filter", "_list", "_tag", "_profile", "_security"]
NAMES = ["id", "meta", "identifier", "name", "extension", "url", "valueString", "valueBoolean", "valueReference",
         "status", "type", "code", "coding", "system", "display", "reference", "birthDate", "gender", "address",
         "telecom", "partOf", "item", "member", "period", "start", "end", "text", "contained", "resourceType",
         "value", "family", "given", "active", "quantity", "unitPrice", "patient", "provider", "billablePeriod",
         "diagnosis", "entry", "request", "resource", "fullUrl", "subject", "created", "use", "total", "x"]

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
numbers = st.one_of(st.integers(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.sampled_from(HOSTILE), texts, numbers.map(str),
                    st.dates().map(str), st.datetimes().map(lambda d: d.isoformat()))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(HOSTILE), texts)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(NAMES), texts), inner, max_size=4)),
    max_leaves=16)


def dump(value: Any) -> bytes:
    """JSON of any generated value (integers beyond 64 bits included, which orjson refuses)."""
    return json.dumps(value, ensure_ascii=False).encode()


def deep(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"extension": value}
    return value


# Bodies no client sends: nesting beyond any parser's limit, huge arrays, strings and objects.
PATHOLOGICAL: list[bytes] = [b'{"extension":[' * 400 + b"1" + b"]}" * 400, orjson.dumps(deep(100)),
                             orjson.dumps(list(range(100_000))), orjson.dumps("x" * 1_000_000),
                             orjson.dumps({f"k{i}": i for i in range(5000)}), orjson.dumps([{"url": "x"}] * 20_000)]


# --- the API as its CapabilityStatement declares it --------------------------------------------------------------


@dataclass
class Declared:
    types: list[str]
    interactions: dict[str, list[str]]
    params: dict[str, list[str]]
    param_types: dict[str, dict[str, str]]
    includes: dict[str, list[str]]
    revincludes: dict[str, list[str]]
    operations: dict[str, list[str]]
    ids: dict[str, list[str]] = field(default_factory=dict)  # stored resources of each type
    stored: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def declared_api(client: TestClient, token: str) -> Declared:
    rest = client.get("/fhir/metadata").json()["rest"][0]
    d = Declared([], {}, {}, {}, {}, {}, {})
    for res in rest["resource"]:
        t = res["type"]
        d.types.append(t)
        d.interactions[t] = [i["code"] for i in res.get("interaction", [])]
        d.params[t] = [p["name"] for p in res.get("searchParam", [])]
        d.param_types[t] = {p["name"]: p["type"] for p in res.get("searchParam", [])}
        d.includes[t] = list(res.get("searchInclude", []))
        d.revincludes[t] = list(res.get("searchRevInclude", []))
        d.operations[t] = ["$" + o["name"] for o in res.get("operation", [])]
    auth = {"Authorization": f"Bearer {token}"}
    for t in d.types:
        if "search-type" not in d.interactions[t]:
            continue
        entries = client.get(f"/fhir/{t}?_count=5", headers=auth).json().get("entry", [])
        d.stored[t] = [e["resource"] for e in entries if e.get("search", {}).get("mode") == "match"]
        d.ids[t] = [r["id"] for r in d.stored[t]]
    for path in sorted(EXAMPLES.glob("*.json")):
        body = orjson.loads(path.read_bytes())
        d.examples.setdefault(body["resourceType"], []).append(body)
    return d


@dataclass
class Fuzz:
    client: TestClient
    engine: Engine
    api: Declared
    tokens: dict[str, str]
    backend: str
    client_secret: str
    statuses: Counter[int] = field(default_factory=Counter)  # answers by class (2 = 2xx…) in the current run

    def run(self, strategy: st.SearchStrategy[Any], check: Callable[[Any], None]) -> None:
        @settings(max_examples=EXAMPLES_PER_TEST[self.backend], database=None, derandomize=SEED is None,
                  deadline=None, suppress_health_check=list(HealthCheck), print_blob=False)
        @given(strategy)
        def prop(case: Any) -> None:
            check(case)

        if SEED is not None:
            prop = seed(SEED)(prop)

        self.statuses.clear()
        prop()
        # a generator that only ever produced refusals (or only successes) would test little
        assert self.statuses[2] and self.statuses[4], self.statuses

    def send(self, method: str, url: str, *, who: str = "admin", body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
        h = {"Content-Type": "application/fhir+json"}
        if who in self.tokens:
            h["Authorization"] = f"Bearer {self.tokens[who]}"
        h.update(headers or {})
        encoded = {k: v.encode("utf-8") for k, v in h.items()}
        # httpx takes a path starting with // for a host (an error): an absolute URL sends it as the path it is
        target = f"http://testserver{url}" if url.startswith("//") else url
        resp = self.client.request(method, target, content=body, headers=encoded)
        self.statuses[resp.status_code // 100] += 1
        sent = unquote_plus(url) + (body or b"").decode("utf-8", "replace") + " ".join(h.values())
        assert_sound(resp, method, sent, (method, url[:300], (body or b"")[:300], headers))
        return resp

    def versions(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(resource_version)).scalar_one())


@pytest.fixture(scope="module")
def fuzz(backend: tuple[Settings, Engine]) -> Iterator[Fuzz]:
    settings_, engine = backend
    _reset(settings_, engine)
    load_demo_scheme(engine)
    with transaction(engine, write=True) as conn:  # a system client (OAuth2) reading everything
        admin.create_account(conn, admin.NewUser("fuzz-tech", "Tech-user-pass-42", user_type="technical",
                                                 roles=["IMIS Administrator"]))
        secret = clients.create_client(conn, CLIENT_ID, "fuzz-tech", "system/*.read")
    # The fuzzing sends thousands of bad credentials from one address: the throttle (tested on its own) would
    # soon refuse everything, the good credentials too.
    app = HifhirApp(dataclasses.replace(settings_, login_max_failures_per_address=10**9), engine)
    with TestClient(app, base_url="http://testserver") as client:
        tokens = {name: app.tokens.issue(user[0])[0] for name, user in
                  (("admin", ADMIN), ("clerk", CLERK), ("nobody", NOBODY), ("officer", ("E00001", "")))}
        granted = client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                                    "client_secret": secret, "scope": "system/*.read"})
        tokens["system"] = granted.json()["access_token"]
        name = "sqlite" if settings_.is_sqlite else "postgresql"
        yield Fuzz(client, engine, declared_api(client, tokens["admin"]), tokens, name, str(secret))


CLIENT_ID = "fuzz-client"
WHO = st.sampled_from(["admin", "admin", "admin", "clerk", "officer", "system", "nobody", "anonymous"])


# --- searches ---------------------------------------------------------------------------------------------------


def realistic(api: Declared, param_type: str) -> st.SearchStrategy[str]:
    """Values a client would send for a parameter of this type (matching the demo data some of the time)."""
    ids = sorted({i for found in api.ids.values() for i in found}) or ["x"]
    refs = sorted({f"{t}/{i}" for t, found in api.ids.items() for i in found}) or ["Patient/x"]
    by_type: dict[str, list[str]] = {
        "token": ["M", "F", "true", "false", "active", "R1", "D1", "1", "0", "A", "C", "E00001", "RHOS0011",
                  "https://openimis.github.io/openimis_fhir_r4_ig/CodeSystem/openimis-identifiers|Code", "|x", "x|"],
        "string": ["Doe", "d", "Ultha", "Rapta", "Jamu", "a b", "O'Brien"],
        "date": ["2020", "2020-01", "2020-01-01", "2020-01-01T10:00:00Z", "2030-12-31T23:59:59+03:00"],
        "uri": ["https://openimis.github.io/openimis_fhir_r4_ig/CodeSystem/patient-profession", "http://x"],
        "number": ["1", "0", "1.5", "-3", "1e3"],
        "quantity": ["5", "5||mg", "ge5"],
    }
    if param_type == "reference":
        return st.sampled_from(ids + refs)
    return st.one_of(st.sampled_from(by_type.get(param_type, ["x"])), st.sampled_from(ids))


@st.composite
def search_requests(draw: st.DrawFn, api: Declared) -> tuple[str, list[tuple[str, str]], str]:
    searchable = [t for t in api.types if "search-type" in api.interactions[t]]
    rtype = draw(st.sampled_from(searchable))
    own = api.params[rtype] or ["_id"]
    refs = [p for p in own if api.param_types[rtype][p] == "reference"] or own
    items: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 9))
        if kind <= 4:  # a declared parameter, maybe modified, with a realistic or hostile value, or a list
            name = draw(st.sampled_from(own))
            ptype = api.param_types[rtype][name]
            modifier = draw(st.sampled_from(MODIFIERS)) if draw(st.integers(0, 3)) == 0 else ""
            key = f"{name}:{modifier}" if modifier else name
            values = draw(st.lists(st.one_of(realistic(api, ptype), scalars), min_size=1, max_size=3))
            prefixed = ptype in ("date", "number", "quantity") or draw(st.integers(0, 5)) == 0
            value = ",".join((draw(st.sampled_from(PREFIXES)) if prefixed else "") + v for v in values)
        elif kind == 5:  # a chain or a reverse chain
            ref = draw(st.sampled_from(refs))
            other = draw(st.sampled_from(api.types))
            leaf = draw(st.sampled_from([*(api.params.get(other) or ["_id"]), "x", "_has"]))
            rev = draw(st.sampled_from(api.revincludes[rtype] or [f"{other}:{ref}"])).split(":")
            key = draw(st.sampled_from([f"{ref}.{leaf}", f"{ref}:{other}.{leaf}", f"{ref}.{ref}.{ref}.{leaf}",
                                        f"_has:{rev[0]}:{rev[-1]}:{leaf}", f"_has:{rev[0]}:{rev[-1]}",
                                        f"_has:{rev[0]}:{rev[-1]}:_has:{rtype}:{ref}:{leaf}"]))
            value = draw(st.one_of(realistic(api, "token"), realistic(api, "string"), scalars))
        elif kind <= 7:  # an include, declared or junk
            key = draw(st.sampled_from(["_include", "_revinclude", "_include:iterate", "_revinclude:iterate",
                                        "_include:recurse", "_include:x"]))
            declared = api.includes[rtype] + api.revincludes[rtype] or [f"{rtype}:x"]
            junk = ["*", f"{rtype}:*", "Foo:bar", ":", "a:b:c:d"]
            value = draw(st.one_of(st.sampled_from(declared), st.sampled_from(declared),
                                   st.sampled_from(declared).map(lambda v: f"{v}:{rtype}"), st.sampled_from(junk),
                                   scalars))
        else:  # a result parameter
            key = draw(st.sampled_from(RESULT_PARAMS))
            if key == "_sort":
                value = ",".join(draw(st.lists(st.sampled_from([*own, *(f"-{p}" for p in own), "x", "-", ""]),
                                               max_size=10)))
            elif key == "_elements":
                value = ",".join(draw(st.lists(st.sampled_from([*NAMES, "a.b", "*", ""]), max_size=8)))
            else:
                value = draw(st.one_of(st.sampled_from(["0", "1", "1000", "true", "count", "accurate", "json", "xml",
                                                        "eyJ4IjoxfQ", "WzAsWzEsMl1d", "WzEsWyJhIiwwLDFdXQ"]),
                                       scalars))
        items.append((key, value))
    how = draw(st.sampled_from(["GET", "GET", "GET", "POST"]))
    return rtype, items, how


def test_searches(fuzz: Fuzz) -> None:
    who = "admin"

    def check(case: tuple[str, list[tuple[str, str]], str]) -> None:
        rtype, items, how = case
        for handling in ("lenient", "strict"):
            headers = {"Prefer": f"handling={handling}"}
            if how == "GET":
                resp = fuzz.send("GET", f"/fhir/{rtype}?{urlencode(items)}", who=who, headers=headers)
            else:
                resp = fuzz.send("POST", f"/fhir/{rtype}/_search", who=who, body=urlencode(items).encode(),
                                 headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
            if resp.status_code == 200:
                assert resp.json()["resourceType"] == "Bundle"
                _follow_next(fuzz, resp.json(), who)

    fuzz.run(search_requests(fuzz.api), check)


def _follow_next(fuzz: Fuzz, bundle: dict[str, Any], who: str) -> None:
    nxt = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
    if nxt:
        fuzz.send("GET", nxt[0].replace("http://testserver", ""), who=who)


def test_searches_as_every_kind_of_user(fuzz: Fuzz) -> None:
    def check(case: tuple[tuple[str, list[tuple[str, str]], str], str]) -> None:
        (rtype, items, _how), who = case
        fuzz.send("GET", f"/fhir/{rtype}?{urlencode(items)}", who=who)

    fuzz.run(st.tuples(search_requests(fuzz.api), WHO), check)


# --- reads, vreads, history, operations --------------------------------------------------------------------------

ID_LIKE = st.one_of(st.sampled_from(HOSTILE), texts, st.uuids().map(str), st.integers().map(str))


@st.composite
def reads(draw: st.DrawFn, api: Declared) -> tuple[str, str]:
    rtype = draw(st.sampled_from([*api.types, "Foo", "patient", "", "$everything"]))
    stored = api.ids.get(rtype) or []
    rid = draw(st.sampled_from(stored) if stored and draw(st.booleans()) else ID_LIKE)
    rid_q = quote(rid, safe="")
    version = draw(st.one_of(st.integers(-2, 5).map(str), ID_LIKE))
    ops = [*api.operations.get(rtype, []), "$everything", "$x", "$validate", "$photo"]
    path = draw(st.sampled_from([
        f"{rtype}/{rid_q}", f"{rtype}/{rid_q}/_history", f"{rtype}/{rid_q}/_history/{quote(version, safe='')}",
        f"{rtype}/_history", f"{rtype}/{rid_q}/{draw(st.sampled_from(ops))}", f"{rtype}/{draw(st.sampled_from(ops))}",
    ]))
    query = urlencode(draw(st.lists(st.tuples(st.sampled_from(["_count", "_since", "_cursor", "_format", "_summary",
                                                               "code", "system", "url", "_elements", "x"]),
                                              scalars), max_size=3)))
    return draw(WHO), f"/fhir/{path}" + (f"?{query}" if query else "")


def test_reads_vreads_history_and_operations(fuzz: Fuzz) -> None:
    def check(case: tuple[str, str]) -> None:
        who, url = case
        fuzz.send("GET", url, who=who)

    fuzz.run(reads(fuzz.api), check)


# --- writes -----------------------------------------------------------------------------------------------------


def _mutate(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """One random change somewhere inside a JSON value: replace, drop or add an element, change a type."""
    descend = draw(st.integers(0, 7)) > 0 if depth == 0 else draw(st.booleans())  # the top rarely goes whole
    if isinstance(value, dict) and value and depth < 6 and descend:
        key = draw(st.sampled_from(sorted(value)))
        out = dict(value)
        out[key] = _mutate(draw, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and depth < 6 and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], _mutate(draw, value[i], depth + 1), *value[i + 1:]]
    how = draw(st.integers(0, 5))
    if how == 0 and isinstance(value, dict) and value:
        out = dict(value)
        out.pop(draw(st.sampled_from(sorted(value))))
        return out
    if how == 1 and isinstance(value, dict):
        return {**value, draw(st.one_of(st.sampled_from(NAMES), texts)): draw(json_values)}
    if how == 2 and isinstance(value, list):
        return value * draw(st.integers(0, 50))
    if how == 3:
        return draw(st.sampled_from([deep(30), [], {}, None, ""]))
    return draw(json_values)


@st.composite
def writes(draw: st.DrawFn, api: Declared) -> tuple[str, str, str, bytes, dict[str, str]]:
    writable = [t for t in api.types if {"create", "update"} & set(api.interactions[t])]
    rtype = draw(st.sampled_from(writable))
    templates = api.examples.get(rtype, []) + api.stored.get(rtype, []) + [{"resourceType": rtype}]
    template = draw(st.sampled_from(templates))
    body: Any = template
    for _ in range(draw(st.integers(0, 3))):
        body = _mutate(draw, body)
    stored = api.ids.get(rtype) or []
    rid = draw(st.sampled_from(stored)) if stored and draw(st.booleans()) else draw(ID_LIKE)
    method, url = draw(st.sampled_from([
        ("POST", f"/fhir/{rtype}"), ("PUT", f"/fhir/{rtype}/{quote(rid, safe='')}"),
        ("PUT", f"/fhir/{rtype}?identifier={quote(draw(scalars), safe='')}"), ("POST", f"/fhir/{rtype}/$validate"),
        ("POST", f"/api/api_fhir_r4/{rtype}"), ("DELETE", f"/fhir/{rtype}/{quote(rid, safe='')}"),
    ]))
    if method == "PUT" and isinstance(body, dict) and draw(st.integers(0, 3)):
        body = {**body, "id": rid}  # mostly the id the URL names, as an update must carry
    shape = draw(st.integers(0, 9))
    if shape == 8:
        raw = draw(st.one_of(st.binary(max_size=200), st.sampled_from(
            [b"", b"{", b"[", b"null", b"1", b'"x"', b'{"resourceType": "' + rtype.encode() + b'"',
             b"\xff\xfe", b'{"a": NaN}', b'{"a": 1e99999}', b'{"a":"\\ud800"}', b"{}" * 1000])))
    elif shape == 9:
        filler = draw(st.sampled_from(PATHOLOGICAL))
        raw = b'{"resourceType": "%s", "id": "x", "extension": %s}' % (rtype.encode(), filler)
    else:
        raw = dump(body)
    headers = draw(st.dictionaries(st.sampled_from(["If-Match", "If-None-Exist", "Prefer", "Content-Type"]),
                                   st.one_of(scalars, st.sampled_from(['W/"1"', 'W/"x"', "identifier=1",
                                                                       "return=representation", "handling=strict",
                                                                       "application/json", "text/xml"])),
                                   max_size=2))
    return draw(WHO), method, url, raw, headers


def test_writes(fuzz: Fuzz) -> None:
    def check(case: tuple[str, str, str, bytes, dict[str, str]]) -> None:
        who, method, url, raw, headers = case
        before = fuzz.versions()
        resp = fuzz.send(method, url, who=who, body=raw if method != "DELETE" else None, headers=headers)
        if resp.status_code >= 400 or "$validate" in url:
            assert fuzz.versions() == before, (method, url, raw[:300], resp.text[:300])

    fuzz.run(writes(fuzz.api), check)


@st.composite
def bundles(draw: st.DrawFn, api: Declared) -> tuple[str, bytes]:
    entries = []
    for _ in range(draw(st.integers(0, 4))):
        rtype = draw(st.sampled_from(api.types))
        resource = draw(st.sampled_from([*api.examples.get(rtype, []), {"resourceType": rtype}]))
        if draw(st.booleans()):
            resource = _mutate(draw, resource)
        method = draw(st.sampled_from(["POST", "PUT", "GET", "DELETE"] * 3 + ["PATCH", "x"]))
        url = draw(st.sampled_from([rtype, f"{rtype}/{draw(ID_LIKE)}", f"{rtype}?{draw(scalars)}", "", "metadata"]))
        entry: dict[str, Any] = {"fullUrl": draw(st.sampled_from(["urn:uuid:6f0c3e4c-1d6e-4a38-9c5d-7f1e0b1b6a2d",
                                                                  "urn:uuid:x", "", "Patient/1"])),
                                 "request": {"method": method, "url": url}}
        if draw(st.booleans()):
            entry["resource"] = resource
        entries.append(draw(st.sampled_from([entry, _mutate(draw, entry)])))
    bundle_type = draw(st.sampled_from(["transaction", "batch"] * 3 + ["collection", "x"]))
    bundle: Any = {"resourceType": "Bundle", "type": bundle_type, "entry": entries}
    if draw(st.integers(0, 4)) == 0:
        bundle = _mutate(draw, bundle)
    if draw(st.integers(0, 9)) == 0:  # an entry no parser-and-writer round trip survives
        filler = draw(st.sampled_from(PATHOLOGICAL))
        return draw(WHO), b'{"resourceType":"Bundle","type":"%s","entry":[{"request":{"method":"POST","url":' \
            b'"Patient"},"resource":{"resourceType":"Patient","extension":%s}}]}' % (bundle_type.encode(), filler)
    return draw(WHO), dump(bundle)


def test_bundles(fuzz: Fuzz) -> None:
    def check(case: tuple[str, bytes]) -> None:
        who, raw = case
        before = fuzz.versions()
        resp = fuzz.send("POST", "/fhir", who=who, body=raw)
        if resp.status_code >= 400:
            assert fuzz.versions() == before, (raw[:300], resp.text[:300])

    fuzz.run(bundles(fuzz.api), check)


# --- anything at all --------------------------------------------------------------------------------------------

SEGMENT_TEXT = st.text(alphabet=string.printable, max_size=12)


@st.composite
def raw_requests(draw: st.DrawFn, api: Declared) -> tuple[str, str, str, bytes, dict[str, str]]:
    base = draw(st.sampled_from(["/fhir", "/api/api_fhir_r4", "", "/api", "/fhir/fhir", "/api/api_fhir_r4/login",
                                 "/api/login", "/healthz", "/FHIR"]))
    segments = draw(st.lists(st.one_of(
        st.sampled_from([*api.types, "_history", "_search", "metadata", "$validate", "$expand", "$lookup", "$photo",
                         "..", "%2e%2e", "%2F", "", "login", "."]),
        SEGMENT_TEXT.map(lambda s: quote(s, safe=""))), max_size=5))
    path = base + "/" + "/".join(segments)
    query = urlencode(draw(st.lists(st.tuples(st.one_of(st.sampled_from(RESULT_PARAMS), SEGMENT_TEXT), scalars),
                                    max_size=3)))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO"]))
    body = draw(st.one_of(st.just(b""), st.binary(max_size=64),
                          json_values.map(dump)))
    headers = draw(st.dictionaries(
        st.sampled_from(["Accept", "Content-Type", "Prefer", "If-Match", "If-None-Exist", "X-Forwarded-For", "Origin",
                         "Host", "Access-Control-Request-Method"]),
        st.one_of(st.sampled_from(["application/fhir+json", "application/json", "text/html", "*/*", "application/xml",
                                   "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ";;;",
                                   "application/fhir+json; charset=latin-1", "évil", "a" * 200]),
                  SEGMENT_TEXT), max_size=3))
    return draw(WHO), method, path + (f"?{query}" if query else ""), body, headers


def test_any_method_path_and_headers(fuzz: Fuzz) -> None:
    def check(case: tuple[str, str, str, bytes, dict[str, str]]) -> None:
        who, method, url, body, headers = case
        before = fuzz.versions()
        resp = fuzz.send(method, url, who=who, body=body or None, headers=headers)
        if resp.status_code >= 400:
            assert fuzz.versions() == before, (method, url, body[:300], resp.text[:300])

    fuzz.run(raw_requests(fuzz.api), check)



# --- the administration API and the OAuth2 token endpoint ------------------------------------------------------

ADMIN_FIELDS = ["username", "password", "type", "roles", "districts", "officer", "claimAdmin", "healthFacility",
                "lastName", "otherNames", "email", "language", "active", "name", "rights", "addRights",
                "removeRights", "blocked", "x"]
ADMIN_VALUES = st.one_of(json_values, st.sampled_from(["Clerk", "IMIS Administrator", "interactive", "officer",
                                                       "technical", "E00001", "Admin", "long-enough-Passw0rd!"]),
                         st.lists(st.one_of(st.sampled_from(["Clerk", "R1", "D1", "101101", "999999"]),
                                            st.integers(-5, 10**7)), max_size=4))


@st.composite
def admin_requests(draw: st.DrawFn) -> tuple[str, str, str, bytes]:
    subject = draw(st.sampled_from(["users", "roles", "clients", "", "users/x/y"]))
    name = draw(st.one_of(st.sampled_from(["", "Admin", "clerk", "E00001", "Clerk", "IMIS Administrator", "nobody"]),
                          SEGMENT_TEXT))
    path = f"/api/admin/{subject}" + (f"/{quote(name, safe='')}" if name else "")
    method = draw(st.sampled_from(["GET", "POST", "PATCH", "PUT", "DELETE"]))
    body = draw(st.one_of(st.dictionaries(st.sampled_from(ADMIN_FIELDS), ADMIN_VALUES, max_size=5).map(dump),
                          st.binary(max_size=40)))
    return draw(WHO), method, path, body


def test_the_administration_api(fuzz: Fuzz) -> None:
    def check(case: tuple[str, str, str, bytes]) -> None:
        who, method, path, body = case
        fuzz.send(method, path, who=who, body=body, headers={"Content-Type": "application/json"})

    fuzz.run(admin_requests(), check)


@st.composite
def token_requests(draw: st.DrawFn, secret: str) -> tuple[bytes, dict[str, str]]:
    fields = draw(st.dictionaries(
        st.sampled_from(["grant_type", "client_id", "client_secret", "scope", "client_assertion_type",
                         "client_assertion", "x"]),
        st.one_of(st.sampled_from(["client_credentials", CLIENT_ID, secret, "system/*.read", "system/Patient.rs",
                                   "system/Patient.cr", "user/*.*", "password",
                                   "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "eyJhbGciOiJub25lIn0.e30.",
                                   "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJ4In0.x"]), scalars), max_size=5))
    headers = draw(st.sampled_from([{}, {"Authorization": "Basic eDp5"}, {"Authorization": "Basic %%%"},
                                    {"Authorization": "Basic " + "A" * 300}]))
    if draw(st.integers(0, 2)) == 0:  # a third of the time, the registered client's well-formed request
        fields = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": secret, **fields}
    body = draw(st.one_of(st.just(urlencode(fields).encode()), st.binary(max_size=60)))
    return body, headers


def test_the_oauth2_token_endpoint(fuzz: Fuzz) -> None:
    """Errors here are OAuth2's ({"error": …}, RFC 6749 §5.2), not OperationOutcomes."""
    def check(case: tuple[bytes, dict[str, str]]) -> None:
        body, headers = case
        resp = fuzz.client.post("/oauth/token", content=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", **headers})
        fuzz.statuses[resp.status_code // 100] += 1
        assert resp.status_code < 500, (body, resp.text)
        if resp.status_code >= 400:
            assert isinstance(resp.json().get("error"), str), resp.text
            sent = unquote_plus(body.decode("utf-8", "replace"))
            assert not [m.group(0) for m in LEAK.finditer(resp.text) if m.group(0) not in sent], resp.text

    fuzz.run(token_requests(fuzz.client_secret), check)


# --- what fuzzing found, kept as plain regression cases -------------------------------------------------------

_DEEP_300 = b'{"extension":[' * 300 + b'{"url":"x"}' + b"]}" * 300
FOUND: list[tuple[str, str, bytes]] = [
    # a CodeableConcept whose coding is not an array reached the profile's binding check (500)
    ("POST", "Contract", b'{"resourceType":"Contract","scope":{"coding":true},"status":"executed"}'),
    ("POST", "Patient", b'{"resourceType":"Patient","maritalStatus":{"coding":{"code":"M"}}}'),
    # a coding whose system is not a string reached the set of (system, code) pairs of a required binding (500)
    ("POST", "Location", b'{"resourceType":"Location","name":"Jamu","physicalType":{"coding":[{"code":"W",'
                         b'"system":[]}]}}'),
    ("POST", "Patient", b'{"resourceType":"Patient","maritalStatus":{"coding":[{"code":"M","system":{}}]}}'),
    # nesting orjson reads (1,024 levels) but cannot write back (255): $validate and batch entries (500)
    ("POST", "Patient/$validate", b'{"resourceType":"Parameters","parameter":[{"name":"resource","resource":'
                                  b'{"resourceType":"Patient","extension":[' + _DEEP_300 + b"]}}]}"),
    ("POST", "", b'{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":"Patient"},'
                 b'"resource":{"resourceType":"Patient","extension":[' + _DEEP_300 + b"]}}]}"),
    # 20,000 invalid extensions: every schema error listed took a minute of CPU
    ("POST", "Communication", b'{"resourceType":"Communication","extension":[' +
     b",".join([b'{"url":"x"}'] * 20_000) + b"]}"),
]


@pytest.mark.parametrize(("method", "path", "body"), FOUND, ids=[f"{m} {p}" for m, p, _b in FOUND])
def test_what_fuzzing_found(api: Any, method: str, path: str, body: bytes) -> None:
    resp = api.client.request(method, f"/fhir/{path}".rstrip("/"), content=body, headers=api.headers())

    assert_sound(resp, method, body.decode(), (method, path))
