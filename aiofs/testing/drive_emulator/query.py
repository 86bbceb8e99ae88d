"""Drive v3 ``q`` search grammar and ``fields`` masks, as the emulator enforces them.

Contract:

* :func:`parse_query` turns a ``q`` string into a predicate over the emulator's file
  records, or raises :class:`QueryError` (the emulator answers 400 ``invalid``). Supported:
  ``and``/``or``/``not``, parentheses, string literals in single quotes with ``\\'`` and
  ``\\\\`` escapes, ``name``/``mimeType``/``fullText`` with ``=``, ``!=``, ``contains``;
  ``'ID' in parents``; ``trashed``/``starred`` ``= true|false``; ``modifiedTime`` and
  ``createdTime`` compared with RFC 3339 strings. **``name =`` ignores case**, as Drive's
  does (so clients must re-check exact names).
* :func:`parse_fields` parses a ``fields`` mask (``a,b(c,d),e/f``, ``*``) and checks every
  name against the resource's schema: an unknown field raises :class:`QueryError` (Drive
  answers 400). :func:`apply_fields` filters a rendered resource by a parsed mask.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Callable

__all__ = ["QueryError", "parse_query", "parse_fields", "apply_fields", "SCHEMAS"]


class QueryError(ValueError):
    """A ``q`` or ``fields`` value Drive would reject with 400."""

    def __init__(self, message: str, reason: str = "invalid", location: str = "q"):
        super().__init__(message)
        self.reason = reason
        self.location = location


# -- q -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<op><=|>=|!=|=|<|>)
    | (?P<paren>[()])
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""", re.VERBOSE)

_STRING_FIELDS = {"name", "mimeType", "fullText"}
_BOOL_FIELDS = {"trashed", "starred"}
_TIME_FIELDS = {"modifiedTime", "createdTime"}


def _tokens(q: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(q):
        if q[pos:].strip() == "":
            break
        m = _TOKEN.match(q, pos)
        if not m or m.end() == pos:
            raise QueryError(f"Invalid Value: unexpected text at {q[pos:pos + 20]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(body[i + 1])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def _parse_time(text: str) -> float:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise QueryError(f"Invalid Value: bad date-time {text!r}") from None


Predicate = Callable[[dict], bool]


class _Parser:
    def __init__(self, tokens):
        self.tokens = tokens
        self.pos = 0

    def peek(self, offset=0):
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else (None, None)

    def take(self):
        tok = self.peek()
        self.pos += 1
        return tok

    def expect_word(self, *words):
        kind, value = self.take()
        if kind != "word" or value.lower() not in words:
            raise QueryError(f"Invalid Value: expected {'/'.join(words)}, got {value!r}")
        return value.lower()

    def parse(self) -> Predicate:
        pred = self.or_expr()
        if self.pos != len(self.tokens):
            raise QueryError(f"Invalid Value: unexpected {self.peek()[1]!r}")
        return pred

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.peek() == ("word", "or"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda f, ps=parts: any(p(f) for p in ps))

    def and_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while self.peek() == ("word", "and"):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else (lambda f, ps=parts: all(p(f) for p in ps))

    def not_expr(self) -> Predicate:
        if self.peek() == ("word", "not"):
            self.take()
            inner = self.not_expr()
            return lambda f: not inner(f)
        return self.atom()

    def atom(self) -> Predicate:
        kind, value = self.peek()
        if kind == "paren" and value == "(":
            self.take()
            inner = self.or_expr()
            if self.take() != ("paren", ")"):
                raise QueryError("Invalid Value: missing ')'")
            return inner
        if kind == "string":  # 'ID' in parents
            self.take()
            literal = _unquote(value)
            self.expect_word("in")
            field = self.expect_word("parents")
            assert field == "parents"
            return lambda f: literal in f.get("parents", [])
        if kind == "word":
            return self.comparison()
        raise QueryError(f"Invalid Value: unexpected {value!r}")

    def comparison(self) -> Predicate:
        _, field = self.take()
        kind, op = self.take()
        if kind == "word" and op == "contains":
            op = "contains"
        elif kind != "op":
            raise QueryError(f"Invalid Value: expected an operator after {field!r}")
        vkind, raw = self.take()
        if field in _STRING_FIELDS:
            if vkind != "string" or op not in ("=", "!=", "contains"):
                raise QueryError(f"Invalid Value: {field} takes =, != or contains with a string")
            value = _unquote(raw)
            key = "name" if field == "fullText" else field
            if field == "name":
                # Drive's name comparison ignores case: the client must re-check.
                folded = value.casefold()
                if op == "=":
                    return lambda f: f.get("name", "").casefold() == folded
                if op == "!=":
                    return lambda f: f.get("name", "").casefold() != folded
                return lambda f: folded in f.get("name", "").casefold()
            if op == "=":
                return lambda f: f.get(key) == value
            if op == "!=":
                return lambda f: f.get(key) != value
            return lambda f: value.casefold() in str(f.get(key, "")).casefold()
        if field in _BOOL_FIELDS:
            if vkind != "word" or raw not in ("true", "false") or op not in ("=", "!="):
                raise QueryError(f"Invalid Value: {field} takes = true or = false")
            want = raw == "true"
            if op == "!=":
                want = not want
            return lambda f: bool(f.get(field, False)) == want
        if field in _TIME_FIELDS:
            if vkind != "string" or op == "contains":
                raise QueryError(f"Invalid Value: {field} compares with a date-time string")
            when = _parse_time(_unquote(raw))
            ops = {"=": float.__eq__, "!=": float.__ne__, "<": float.__lt__, "<=": float.__le__,
                   ">": float.__gt__, ">=": float.__ge__}
            cmp = ops[op]
            return lambda f: cmp(float(f.get(field, 0.0)), when)
        raise QueryError(f"Invalid Value: unknown search field {field!r}")


def parse_query(q: str) -> Predicate:
    """A predicate over emulator file records (``name``, ``mimeType``, ``parents``,
    ``trashed`` (effective), ``starred``, ``modifiedTime``/``createdTime`` as epoch floats)."""
    tokens = _tokens(q)
    if not tokens:
        return lambda f: True
    # lower-case keywords only (Drive's are case-sensitive: "AND" is an error)
    return _Parser(tokens).parse()


# -- fields ----------------------------------------------------------------------------------

_FILE_FIELDS = {
    "kind", "id", "name", "mimeType", "parents", "trashed", "explicitlyTrashed", "trashedTime",
    "size", "md5Checksum", "createdTime", "modifiedTime", "version", "headRevisionId",
    "description", "quotaBytesUsed", "fileExtension", "fullFileExtension", "exportLinks",
    "capabilities", "webViewLink", "starred", "ownedByMe", "appProperties", "properties",
    "originalFilename", "viewedByMe", "sha1Checksum", "sha256Checksum",
}
_REVISION_FIELDS = {"kind", "id", "mimeType", "modifiedTime", "keepForever", "md5Checksum",
                    "size", "originalFilename", "published"}

# resource -> {field: nested resource name or None (leaf; any sub-selection allowed if "*")}
SCHEMAS: dict[str, dict[str, str | None]] = {
    "file": {f: ("any" if f in ("exportLinks", "capabilities", "appProperties", "properties")
                 else None) for f in _FILE_FIELDS},
    "fileList": {"kind": None, "nextPageToken": None, "incompleteSearch": None, "files": "file"},
    "about": {"kind": None, "storageQuota": "storageQuota", "user": "user",
              "maxUploadSize": None, "importFormats": "any", "exportFormats": "any",
              "appInstalled": None},
    "storageQuota": {"limit": None, "usage": None, "usageInDrive": None, "usageInDriveTrash": None},
    "user": {"kind": None, "displayName": None, "emailAddress": None, "permissionId": None,
             "me": None, "photoLink": None},
    "changeList": {"kind": None, "nextPageToken": None, "newStartPageToken": None,
                   "changes": "change"},
    "change": {"kind": None, "changeType": None, "time": None, "removed": None, "fileId": None,
               "file": "file"},
    "revision": {f: None for f in _REVISION_FIELDS},
    "revisionList": {"kind": None, "nextPageToken": None, "revisions": "revision"},
    "generatedIds": {"kind": None, "space": None, "ids": None},
    "startPageToken": {"kind": None, "startPageToken": None},
}


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise QueryError("Invalid field selection: unbalanced ')'", location="fields")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise QueryError("Invalid field selection: unbalanced '('", location="fields")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_fields(text: str | None, resource: str) -> dict | None:
    """Parse and check a mask; ``None`` (no mask) means the resource's default fields.

    Returns ``{"*": None}`` for everything, else ``{field: submask or None}``.
    """
    if text is None:
        return None
    return _parse(text, resource)


def _parse(text: str, resource: str) -> dict:
    schema = SCHEMAS.get(resource)
    out: dict[str, Any] = {}
    for part in _split_top(text):
        if part == "*":
            out["*"] = None
            continue
        if "(" in part:
            name, _, rest = part.partition("(")
            if not rest.endswith(")"):
                raise QueryError(f"Invalid field selection {part}", location="fields")
            name, sub = name.strip(), rest[:-1]
        elif "/" in part:
            name, _, sub = part.partition("/")
        else:
            name, sub = part, None
        if schema is not None and name not in schema:
            raise QueryError(f"Invalid field selection {name}", location="fields")
        nested = schema.get(name) if schema is not None else "any"
        if sub is None:
            out[name] = None
        elif nested is None:
            raise QueryError(f"Invalid field selection {part}: {name} has no sub-fields",
                             location="fields")
        else:
            out[name] = _parse(sub, nested) if nested != "any" else {"*": None}
    return out


def apply_fields(resource: Any, mask: dict | None) -> Any:
    """Keep only the masked fields of a rendered resource (lists element-wise)."""
    if mask is None or "*" in mask:
        return resource
    if isinstance(resource, list):
        return [apply_fields(item, mask) for item in resource]
    if not isinstance(resource, dict):
        return resource
    out = {}
    for name, sub in mask.items():
        if name in resource:
            out[name] = apply_fields(resource[name], sub) if sub is not None else resource[name]
    return out
