"""A tiny FHIRPath subset, enough for the invariants found in the IG snapshots.

Supported: member navigation (with choice-type ``value`` -> ``valueX`` resolution and
backtick identifiers), ``$this``, ``%resource``, string/number/boolean literals,
``( )``, indexers ``[n]``, operators ``.`` ``|`` ``+`` ``-`` ``&`` ``=`` ``!=`` ``<``
``<=`` ``>`` ``>=`` ``in`` ``contains`` ``and`` ``or`` ``xor`` ``implies``, and the
functions ``exists([crit])``, ``empty()``, ``count()``, ``length()``, ``hasValue()``,
``children()``, ``not()``, ``where(crit)``, ``select(expr)``, ``all(crit)``,
``allTrue()``, ``allFalse()``, ``first()``, ``matches(re)``, ``startsWith(s)``.

Anything else raises :class:`UnsupportedExpression` at compile time, and the caller skips
that constraint. Expressions present in the IG that are knowingly NOT evaluated:

* ``dom-3`` (contained resources must be referenced) - needs ``descendants()``,
  ``as()``, ``trace()``; a contained resource is rare in this API and reference
  resolution is the store's concern.
* ``dom-6`` (``text.`div`.exists()``) - a best-practice *warning* on every resource
  without narrative; pure noise for an API whose clients never send narrative.
* ``ele-1`` / ``ext-1`` - implemented natively (JSON schema ``minItems``/``minProperties``
  and an Extension ``dependencies``/``anyOf`` patch); an object holding only ``id`` is not
  caught.
* In the IG snapshots everything else evaluates (ces-1, org-1/2/3, pat-1, grp-1, ipn-1,
  dom-2/4/5, tim-1..10, adf-0 and the IG's ``insureeCodeMustBeUnder13Chars``).
* Base resource definitions (used without a profile) have 29 keys this subset cannot
  compile (``iif``, ``resolve``, ``descendants``, ``ofType``, ``memberOf``, ``%ucum``...):
  bdl-7/8/11/12, cpb-7/9/12, csd-1, ctm-1, dom-3, ig-1/2, md-1, nsd-2, obs-7, que-1/2/7,
  ras-1/2, sdf-1/8/8a/9/15a/16/17/20/23. They are skipped, as are comparisons of
  non-numbers (date/time ordering such as mdd-1) and any evaluation error at run time.

Evaluation follows FHIRPath collection semantics: every value is a list; an empty result
of a constraint counts as "satisfied".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Env = dict[str, Any]
Fn = Callable[[list[Any], Env], list[Any]]


class UnsupportedExpression(ValueError):
    """The expression uses FHIRPath this evaluator does not implement."""


_TOKEN_RE = re.compile(
    r"\s*(?:"
    r"(?P<str>'(?:[^'\\]|\\.)*')"
    r"|(?P<num>\d+(?:\.\d+)?)"
    r"|(?P<bt>`[^`]*`)"
    r"|(?P<op><=|>=|!=|!~|[=<>~|+\-&.,()\[\]])"
    r"|(?P<id>[%$]?[A-Za-z_][A-Za-z0-9_]*)"
    r")"
)


_ESCAPES = {"'": "'", '"': '"', "`": "`", "r": "\r", "n": "\n", "t": "\t", "f": "\f", "\\": "\\", "/": "/"}


def _unescape(body: str) -> str:
    """FHIRPath string literal escapes (\\' \\n \\/ \\uXXXX ...)."""
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u":
                try:
                    out.append(chr(int(body[i + 2 : i + 6], 16)))
                except ValueError as exc:
                    raise UnsupportedExpression(f"bad escape in {body!r}") from exc
                i += 6
                continue
            # unknown escapes keep their backslash (regexes such as '\\d' in matches())
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _tokenize(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    src = src.strip()
    while pos < len(src):
        m = _TOKEN_RE.match(src, pos)
        if m is None or m.end() == pos:
            raise UnsupportedExpression(f"cannot tokenize {src[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        text = m.group(kind)
        if kind == "bt":
            kind, text = "id", text[1:-1]
        out.append((kind, text))
    return out


# -- evaluation helpers ----------------------------------------------------------------


def _navigate(items: list[Any], name: str) -> list[Any]:
    out: list[Any] = []
    for it in items:
        if not isinstance(it, dict):
            continue
        if name in it:
            v = it[name]
        else:
            # choice type: FHIRPath `value` finds `valueString`, `valueQuantity`...
            v = None
            n = len(name)
            for k, kv in it.items():
                if len(k) > n and k.startswith(name) and k[n].isupper():
                    v = kv
                    break
            if v is None:
                continue
        if isinstance(v, list):
            out.extend(x for x in v if x is not None)
        else:
            out.append(v)
    return out


def _truth(coll: list[Any]) -> bool | None:
    """Singleton evaluation of collections as boolean (None = empty)."""
    if not coll:
        return None
    if len(coll) == 1:
        v = coll[0]
        return v if isinstance(v, bool) else True
    raise UnsupportedExpression("boolean of a multi-item collection")


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


class _Parser:
    def __init__(self, src: str) -> None:
        self.toks = _tokenize(src)
        self.i = 0

    def peek(self, k: int = 0) -> tuple[str, str] | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def take(self, text: str | None = None) -> tuple[str, str]:
        t = self.peek()
        if t is None or (text is not None and t[1] != text):
            raise UnsupportedExpression(f"expected {text!r}, got {t!r}")
        self.i += 1
        return t

    def at(self, *texts: str) -> bool:
        t = self.peek()
        return t is not None and t[1] in texts and t[0] in ("op", "id")

    def parse(self) -> Fn:
        fn = self.expr()
        if self.peek() is not None:
            raise UnsupportedExpression(f"trailing tokens at {self.peek()!r}")
        return fn

    # precedence, lowest first: implies < or/xor < and < in/contains < = != < < > < | < + - & < .
    def expr(self) -> Fn:
        left = self.or_()
        while self.at("implies"):
            self.take()
            right = self.or_()
            left = _implies(left, right)
        return left

    def or_(self) -> Fn:
        left = self.and_()
        while self.at("or", "xor"):
            op = self.take()[1]
            right = self.and_()
            left = _or(left, right) if op == "or" else _xor(left, right)
        return left

    def and_(self) -> Fn:
        left = self.membership()
        while self.at("and"):
            self.take()
            right = self.membership()
            left = _and(left, right)
        return left

    def membership(self) -> Fn:
        left = self.equality()
        while self.at("in", "contains"):
            op = self.take()[1]
            right = self.equality()
            left = _in(left, right) if op == "in" else _in(right, left)
        return left

    def equality(self) -> Fn:
        left = self.comparison()
        while self.at("=", "!="):
            op = self.take()[1]
            right = self.comparison()
            left = _equals(left, right, op == "!=")
        return left

    def comparison(self) -> Fn:
        left = self.union()
        while self.at("<", "<=", ">", ">="):
            op = self.take()[1]
            right = self.union()
            left = _compare(left, right, op)
        return left

    def union(self) -> Fn:
        left = self.additive()
        while self.at("|"):
            self.take()
            right = self.additive()
            left = _union(left, right)
        return left

    def additive(self) -> Fn:
        left = self.term()
        while self.at("+", "-", "&"):
            op = self.take()[1]
            right = self.term()
            left = _arith(left, right, op)
        return left

    def term(self) -> Fn:
        fn = self.primary()
        while True:
            if self.at("."):
                self.take()
                fn = self.invocation(fn)
            elif self.at("["):
                self.take()
                idx = self.expr()
                self.take("]")
                fn = _index(fn, idx)
            else:
                return fn

    def primary(self) -> Fn:
        t = self.peek()
        if t is None:
            raise UnsupportedExpression("unexpected end")
        kind, text = t
        if kind == "str":
            self.take()
            value = _unescape(text[1:-1])
            return lambda focus, env: [value]
        if kind == "num":
            self.take()
            num: Any = float(text) if "." in text else int(text)
            return lambda focus, env: [num]
        if text == "(":
            self.take()
            fn = self.expr()
            self.take(")")
            return fn
        if kind == "id":
            if text in ("true", "false"):
                self.take()
                b = text == "true"
                return lambda focus, env: [b]
            if text == "$this":
                self.take()
                return lambda focus, env: focus
            if text == "%resource":
                self.take()
                return lambda focus, env: [env["resource"]]
            if text.startswith(("%", "$")):
                raise UnsupportedExpression(f"variable {text}")
            return self.invocation(lambda focus, env: focus)
        raise UnsupportedExpression(f"unexpected token {text!r}")

    def invocation(self, base: Fn) -> Fn:
        kind, name = self.take()
        if kind != "id":
            raise UnsupportedExpression(f"expected a name, got {name!r}")
        if self.at("("):
            self.take()
            args: list[Fn] = []
            while not self.at(")"):
                args.append(self.expr())
                if self.at(","):
                    self.take()
            self.take(")")
            return _function(base, name, args)
        return lambda focus, env: _navigate(base(focus, env), name)


# -- operator closures -------------------------------------------------------------------


def _implies(a: Fn, b: Fn) -> Fn:
    def f(focus: list[Any], env: Env) -> list[Any]:
        x = _truth(a(focus, env))
        if x is False:
            return [True]
        y = _truth(b(focus, env))
        if x is True:
            return [] if y is None else [y]
        return [True] if y is True else []

    return f


def _or(a: Fn, b: Fn) -> Fn:
    def f(focus: list[Any], env: Env) -> list[Any]:
        x = _truth(a(focus, env))
        if x is True:
            return [True]
        y = _truth(b(focus, env))
        if y is True:
            return [True]
        if x is False and y is False:
            return [False]
        return []

    return f


def _xor(a: Fn, b: Fn) -> Fn:
    def f(focus: list[Any], env: Env) -> list[Any]:
        x = _truth(a(focus, env))
        y = _truth(b(focus, env))
        if x is None or y is None:
            return []
        return [x != y]

    return f


def _and(a: Fn, b: Fn) -> Fn:
    def f(focus: list[Any], env: Env) -> list[Any]:
        x = _truth(a(focus, env))
        if x is False:
            return [False]
        y = _truth(b(focus, env))
        if y is False:
            return [False]
        if x is True and y is True:
            return [True]
        return []

    return f


def _in(item: Fn, coll: Fn) -> Fn:
    def f(focus: list[Any], env: Env) -> list[Any]:
        x = item(focus, env)
        if not x:
            return []
        if len(x) > 1:
            raise UnsupportedExpression("'in' on a multi-item collection")
        c = coll(focus, env)
        return [any(_eq(x[0], y) for y in c)]

    return f


def _equals(a: Fn, b: Fn, negate: bool) -> Fn:
    def f(focus: list[Any], env: Env) -> list[Any]:
        x = a(focus, env)
        y = b(focus, env)
        if not x or not y:
            return []
        same = len(x) == len(y) and all(_eq(p, q) for p, q in zip(x, y, strict=True))
        return [same != negate]

    return f


def _compare(a: Fn, b: Fn, op: str) -> Fn:
    def f(focus: list[Any], env: Env) -> list[Any]:
        x = a(focus, env)
        y = b(focus, env)
        if not x or not y:
            return []
        if len(x) > 1 or len(y) > 1:
            raise UnsupportedExpression("comparison of multi-item collections")
        p, q = x[0], y[0]
        # Only numbers: dates/times compare by FHIR precision and time zone rules that a
        # string comparison would get wrong (mdd-1, inv-1): such constraints are skipped.
        if not all(isinstance(z, (int, float)) and not isinstance(z, bool) for z in (p, q)):
            raise UnsupportedExpression("comparison of non-numbers")
        try:
            if op == "<":
                return [p < q]
            if op == "<=":
                return [p <= q]
            if op == ">":
                return [p > q]
            return [p >= q]
        except TypeError as exc:
            raise UnsupportedExpression(str(exc)) from exc

    return f


def _union(a: Fn, b: Fn) -> Fn:
    def f(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for v in a(focus, env) + b(focus, env):
            if not any(_eq(v, w) for w in out):
                out.append(v)
        return out

    return f


def _arith(a: Fn, b: Fn, op: str) -> Fn:
    def f(focus: list[Any], env: Env) -> list[Any]:
        x = a(focus, env)
        y = b(focus, env)
        if op == "&":
            return ["".join(str(v) for v in x[:1]) + "".join(str(v) for v in y[:1])]
        if not x or not y:
            return []
        p, q = x[0], y[0]
        if op == "+":
            if isinstance(p, str) != isinstance(q, str):
                raise UnsupportedExpression("mixed '+'")
            return [p + q]
        return [p - q]

    return f


def _index(base: Fn, idx: Fn) -> Fn:
    def f(focus: list[Any], env: Env) -> list[Any]:
        coll = base(focus, env)
        i = idx(focus, env)
        if not i or not isinstance(i[0], int):
            return []
        return coll[i[0] : i[0] + 1]

    return f


def _each_truth(crit: Fn, coll: list[Any], env: Env) -> list[bool | None]:
    return [_truth(crit([it], env)) for it in coll]


def _function(base: Fn, name: str, args: list[Fn]) -> Fn:
    nargs = len(args)
    if name == "exists" and nargs <= 1:
        if nargs == 0:
            return lambda focus, env: [bool(base(focus, env))]
        crit = args[0]
        return lambda focus, env: [any(t is True for t in _each_truth(crit, base(focus, env), env))]
    if name == "empty" and nargs == 0:
        return lambda focus, env: [not base(focus, env)]
    if name == "count" and nargs == 0:
        return lambda focus, env: [len(base(focus, env))]
    if name == "length" and nargs == 0:

        def length(focus: list[Any], env: Env) -> list[Any]:
            coll = base(focus, env)
            if not coll:
                return []
            if len(coll) > 1 or not isinstance(coll[0], str):
                raise UnsupportedExpression("length() of a non-string")
            return [len(coll[0])]

        return length
    if name == "hasValue" and nargs == 0:
        return lambda focus, env: [len(c := base(focus, env)) == 1 and not isinstance(c[0], (dict, list))]
    if name == "children" and nargs == 0:

        def children(focus: list[Any], env: Env) -> list[Any]:
            out: list[Any] = []
            for it in base(focus, env):
                if isinstance(it, dict):
                    for v in it.values():
                        out.extend(v if isinstance(v, list) else [v])
            return out

        return children
    if name == "not" and nargs == 0:

        def not_(focus: list[Any], env: Env) -> list[Any]:
            t = _truth(base(focus, env))
            return [] if t is None else [not t]

        return not_
    if name == "where" and nargs == 1:
        crit = args[0]
        return lambda focus, env: [it for it in base(focus, env) if _truth(crit([it], env)) is True]
    if name == "select" and nargs == 1:
        proj = args[0]

        def select(focus: list[Any], env: Env) -> list[Any]:
            out: list[Any] = []
            for it in base(focus, env):
                out.extend(proj([it], env))
            return out

        return select
    if name == "all" and nargs == 1:
        crit = args[0]
        return lambda focus, env: [all(t is True for t in _each_truth(crit, base(focus, env), env))]
    if name == "allTrue" and nargs == 0:
        return lambda focus, env: [all(v is True for v in base(focus, env))]
    if name == "allFalse" and nargs == 0:
        return lambda focus, env: [all(v is False for v in base(focus, env))]
    if name == "first" and nargs == 0:
        return lambda focus, env: base(focus, env)[:1]
    if name in ("matches", "startsWith") and nargs == 1:
        arg = args[0]

        def string_fn(focus: list[Any], env: Env) -> list[Any]:
            coll = base(focus, env)
            a = arg(focus, env)
            if not coll or not a:
                return []
            if len(coll) > 1 or not isinstance(coll[0], str):
                raise UnsupportedExpression(f"{name}() of a non-string")
            if name == "matches":
                return [re.fullmatch(a[0], coll[0]) is not None]
            return [coll[0].startswith(a[0])]

        return string_fn
    raise UnsupportedExpression(f"function {name}() with {nargs} argument(s)")


_cache: dict[str, Fn] = {}


def compile_expression(src: str) -> Fn:
    """Compile once (cached); raises UnsupportedExpression for unsupported FHIRPath."""
    fn = _cache.get(src)
    if fn is None:
        fn = _Parser(src).parse()
        _cache[src] = fn
    return fn


def evaluate(fn: Fn, focus: Any, resource: Any) -> bool | None:
    """Run a compiled constraint on one element; True/False, or None if not evaluable."""
    try:
        result = fn([focus], {"resource": resource})
    except (UnsupportedExpression, TypeError, re.error):
        return None
    if not result:
        return True  # an empty result does not violate the invariant
    if len(result) == 1 and isinstance(result[0], bool):
        return result[0]
    return True
