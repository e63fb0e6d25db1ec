"""Loading policies from YAML files and dicts, with errors that say where.

Every unknown key, bad value or bad glob is a ``PolicyError`` naming the
file, the line and the key (``policy.yaml:12: rules[2].match.statements:
unknown statement class or kind 'selct'``): a policy that half loads is a
policy that half protects.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from fnmatch import translate
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..approvals import parse_ttl
from ..approvals.notify import FORMATS, Secret, Webhook
from ..errors import PolicyError
from ..identity import Identity
from ..masking import operators
from ..masking.detectors import DETECTORS, Scanner
from ..masking.filters import FILTERS
from ..masking.plan import ColumnRule, Masking
from ..sql.classify import CLASSES, KINDS
from .model import ACTIONS, IdentityMatch, Match, Policy, Rule
from .presets import PRESETS

__all__ = ["DEFAULT_EXTENDS", "PolicySource", "is_preset_name", "lint_policy", "load_policy"]

PolicySource = Policy | str | os.PathLike[str] | Mapping[str, Any]

#: What a policy file or dict extends when it does not say (``extends: []`` opts out).
DEFAULT_EXTENDS: tuple[str, ...] = ("agent-safe",)

_TOP_KEYS = {
    "version",
    "mode",
    "default",
    "on_unparsed",
    "require_identity",
    "extends",
    "rules",
    "masking",
    "audit",
    "approvals",
    "limits",
}
_RULE_KEYS = {"id", "match", "action", "message"}
_MATCH_KEYS = {
    "identity",
    "statements",
    "tables",
    "columns",
    "functions",
    "where",
    "limit",
    "multiple_statements",
    "sql_regex",
    "affected_rows",
}
_IDENTITY_KEYS = {"user", "agent", "roles", "roles_absent"}
_MASKING_KEYS = {"rules", "detectors", "unmask", "hash_key", "hash_key_env"}
_MASK_RULE_KEYS = {"columns", "operator", "keep_first", "keep_last", "fill", "value", "filter"}
_UNMASK_KEYS = {"roles", "users"}
_AUDIT_KEYS = {"jsonl", "postgresql", "stream", "required", "fsync"}
_APPROVALS_KEYS = {"store", "ttl", "approvers", "notify", "console_url"}
_WEBHOOK_KEYS = {"url", "secret", "secret_env", "format", "timeout"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Path_ = tuple[str | int, ...]


class _Context:
    """Where values came from, so errors can name file, line and key."""

    def __init__(self, source: str, lines: dict[Path_, int]) -> None:
        self.source = source
        self.lines = lines

    def error(self, path: Path_, message: str) -> PolicyError:
        line = None
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                break
        return PolicyError(message, source=self.source, line=line, key=_dotted(path) or None)


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


#: Limits checked while the YAML is composed, before anything is expanded:
#: a policy is a few kilobytes, and a file that needs more is an attack.
MAX_BYTES = 1 << 20  # the file's size
MAX_DEPTH = 64  # nesting of mappings and lists, aliases expanded
MAX_ALIASES = 100  # ``*name`` references
MAX_NODES = 100_000  # values in the document, aliases expanded
MAX_TTL = 366 * 86400  # an approval TTL: a held query waits a year at most
_SAFE_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map")
)


class _Refused(Exception):
    """A limit or a tag the bounded loader refused, at a YAML mark."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.line = mark.line + 1 if mark is not None else None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader composing under limits.

    Counts nesting depth before descending (no RecursionError), aliases as
    they are met, and each node's expanded size and depth as it is built, so
    a billion-laughs file is refused after a few hundred nodes, never
    expanded; an alias to a node still being composed (a cycle) is refused;
    only the standard scalar, list and mapping tags are accepted.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._aliases = 0
        self._open: list[str] = []  # anchors of the nodes being composed
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth), expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML is untyped
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases", event.start_mark)
            if event.anchor in self._open:
                raise _Refused(f"alias *{event.anchor} refers to itself", event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.append(anchor)
        node: Any = super().compose_node(parent, index)
        if anchor is not None:
            self._open.pop()
        self._depth -= 1
        if node.tag not in _SAFE_TAGS:
            raise _Refused(f"tag {node.tag!r} is not allowed in a policy", node.start_mark)
        children: list[Any] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        sizes = [self._sizes[id(c)] for c in children]
        count = 1 + sum(s[0] for s in sizes)
        depth = 1 + max((s[1] for s in sizes), default=0)
        if count > MAX_NODES:
            raise _Refused(
                f"more than {MAX_NODES} values once aliases are expanded", node.start_mark
            )
        if depth > MAX_DEPTH:
            raise _Refused(
                f"nested deeper than {MAX_DEPTH} levels once aliases are expanded", node.start_mark
            )
        self._sizes[id(node)] = (count, depth)
        return node


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text without NUL bytes, or a PolicyError at the offending line."""
    if len(data) > MAX_BYTES:
        raise PolicyError(f"policy file larger than {MAX_BYTES} bytes", source=source, line=1)
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise PolicyError("NUL byte in policy file", source=source, line=line)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError(f"not UTF-8 text: {exc.reason}", source=source, line=line) from None


def _compose(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """YAML to Python, remembering the line of every key and item.

    Any failure, whatever raised it, is a PolicyError naming the file and a line.
    """
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader checks the characters here
        node = loader.get_single_node()
    except _Refused as exc:
        raise PolicyError(str(exc), source=source, line=exc.line) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        if line is None and isinstance(exc, yaml.reader.ReaderError):
            line = text.count("\n", 0, exc.position) + 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"invalid YAML: {problem}", source=source, line=line or 1) from None
    except Exception as exc:  # a bug or a limit of PyYAML: still the policy's fault
        try:
            line = loader.get_mark().line + 1 if loader is not None else 1
        except Exception:  # the reader itself is what failed
            line = 1
        raise PolicyError(
            f"invalid YAML: {type(exc).__name__}: {exc}", source=source, line=line
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    lines: dict[Path_, int] = {}
    constructor = yaml.constructor.SafeConstructor()
    current = [1]  # the line of the node being converted, for unexpected errors

    def walk(n: yaml.Node, path: Path_) -> Any:
        current[0] = n.start_mark.line + 1
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in n.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    raise PolicyError(
                        "keys must be plain strings",
                        source=source,
                        line=key_node.start_mark.line + 1,
                        key=_dotted(path) or None,
                    )
                if key in out:
                    raise PolicyError(
                        "duplicate key",
                        source=source,
                        line=key_node.start_mark.line + 1,
                        key=_dotted((*path, key)),
                    )
                lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = walk(value_node, (*path, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(item, (*path, i)) for i, item in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    if node is None:
        return {}, lines
    try:
        return walk(node, ()), lines
    except PolicyError:
        raise
    except Exception as exc:  # a value PyYAML cannot build (an int of 5,000 digits, ...)
        problem = getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}"
        raise PolicyError(f"invalid value: {problem}", source=source, line=current[0]) from None


def _keys(ctx: _Context, value: Any, path: Path_, allowed: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ctx.error(path, f"{what} must be a mapping, not {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise ctx.error(
                (*path, key), f"unknown key {key!r} (expected one of: {', '.join(sorted(allowed))})"
            )
    return dict(value)


def _choice(ctx: _Context, value: Any, path: Path_, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ctx.error(path, f"must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


def _bool(ctx: _Context, value: Any, path: Path_) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(path, f"must be true or false, not {value!r}")
    return value


def _strings(ctx: _Context, value: Any, path: Path_) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ctx.error(path, "must be a string or a non-empty list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ctx.error((*path, i), f"must be a non-empty string, not {item!r}")
    return value


def _globs(ctx: _Context, value: Any, path: Path_) -> tuple[str, ...]:
    items = _strings(ctx, value, path)
    for i, pattern in enumerate(items):
        depth = 0
        for ch in pattern:
            depth += ch == "["
            depth -= ch == "]" and depth > 0
        if depth:
            raise ctx.error((*path, i), f"bad glob {pattern!r}: unclosed '['")
        try:
            re.compile(translate(pattern))
        except re.error as exc:
            raise ctx.error((*path, i), f"bad glob {pattern!r}: {exc}") from None
    return tuple(items)


def _identity(ctx: _Context, value: Any, path: Path_) -> IdentityMatch:
    raw = _keys(ctx, value, path, _IDENTITY_KEYS, "identity")
    for key in ("user", "agent"):
        if key in raw:
            _globs(ctx, raw[key], (*path, key))
            if not isinstance(raw[key], str):
                raise ctx.error((*path, key), "must be one glob string")
    return IdentityMatch(
        user=raw.get("user"),
        agent=raw.get("agent"),
        roles=frozenset(_strings(ctx, raw["roles"], (*path, "roles")))
        if "roles" in raw
        else frozenset(),
        roles_absent=frozenset(_strings(ctx, raw["roles_absent"], (*path, "roles_absent")))
        if "roles_absent" in raw
        else frozenset(),
    )


def _match(ctx: _Context, value: Any, path: Path_) -> Match:
    raw = _keys(ctx, value if value is not None else {}, path, _MATCH_KEYS, "match")
    kwargs: dict[str, Any] = {}
    if "identity" in raw:
        kwargs["identity"] = _identity(ctx, raw["identity"], (*path, "identity"))
    if "statements" in raw:
        names = [s.lower() for s in _strings(ctx, raw["statements"], (*path, "statements"))]
        for i, name in enumerate(names):
            if name not in CLASSES and name not in KINDS:
                raise ctx.error(
                    (*path, "statements", i),
                    f"unknown statement class or kind {name!r} (classes: "
                    f"{', '.join(sorted(CLASSES))}; kinds: {', '.join(sorted(KINDS))})",
                )
        kwargs["statements"] = frozenset(names)
    for key in ("tables", "columns", "functions"):
        if key in raw:
            kwargs[key] = _globs(ctx, raw[key], (*path, key))
    for key in ("where", "limit", "multiple_statements"):
        if key in raw:
            kwargs[key] = _bool(ctx, raw[key], (*path, key))
    if "sql_regex" in raw:
        pattern = raw["sql_regex"]
        if not isinstance(pattern, str):
            raise ctx.error((*path, "sql_regex"), "must be a regular expression string")
        try:
            kwargs["sql_regex"] = re.compile(pattern, re.IGNORECASE | re.DOTALL)
        except re.error as exc:
            raise ctx.error((*path, "sql_regex"), f"bad regular expression: {exc}") from None
    if "affected_rows" in raw:
        apath = (*path, "affected_rows")
        cond = _keys(ctx, raw["affected_rows"], apath, {"gt", "gte", "lt", "lte"}, "affected_rows")
        if len(cond) != 1:
            raise ctx.error(apath, "needs exactly one of gt, gte, lt, lte")
        ((op, bound),) = cond.items()
        if not isinstance(bound, int) or isinstance(bound, bool) or bound < 0:
            raise ctx.error((*apath, op), "must be a whole number, 0 or more")
        kwargs["affected_rows"] = (op, bound)
    return Match(**kwargs)


def _rules(ctx: _Context, value: Any, path: Path_, seen: set[str]) -> list[Rule]:
    if not isinstance(value, list):
        raise ctx.error(path, "must be a list of rules")
    rules = []
    for i, item in enumerate(value):
        rpath = (*path, i)
        raw = _keys(ctx, item, rpath, _RULE_KEYS, "a rule")
        for required in ("id", "action"):
            if required not in raw:
                raise ctx.error((*rpath, required), f"a rule needs {required!r}")
        rule_id = raw["id"]
        if not isinstance(rule_id, str) or not rule_id.strip():
            raise ctx.error((*rpath, "id"), "must be a non-empty string")
        if rule_id in seen:
            raise ctx.error((*rpath, "id"), f"duplicate rule id {rule_id!r}")
        seen.add(rule_id)
        message = raw.get("message")
        if message is not None and not isinstance(message, str):
            raise ctx.error((*rpath, "message"), "must be a string")
        rules.append(
            Rule(
                id=rule_id,
                match=_match(ctx, raw.get("match"), (*rpath, "match")),
                action=_choice(ctx, raw["action"], (*rpath, "action"), ACTIONS),
                message=message,
            )
        )
    return rules


def _section(ctx: _Context, raw: Mapping[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
    if key not in raw:
        return {}
    return _keys(ctx, raw[key], (key,), allowed, key)


def _masking(ctx: _Context, raw: Mapping[str, Any]) -> Masking | None:
    """The masking section compiled: operators bound, detectors chosen."""
    if not raw:
        return None
    path: Path_ = ("masking",)
    key = raw.get("hash_key")
    env = raw.get("hash_key_env")
    for name, value in (("hash_key", key), ("hash_key_env", env)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ctx.error((*path, name), "must be a non-empty string")
    rules: list[ColumnRule] = []
    items = raw.get("rules", [])
    if not isinstance(items, list):
        raise ctx.error((*path, "rules"), "must be a list of masking rules")
    for i, item in enumerate(items):
        rpath = (*path, "rules", i)
        rule = _keys(ctx, item, rpath, _MASK_RULE_KEYS, "a masking rule")
        if "columns" not in rule or "operator" not in rule:
            raise ctx.error(rpath, "a masking rule needs 'columns' and 'operator'")
        columns = _globs(ctx, rule["columns"], (*rpath, "columns"))
        op = rule["operator"]
        keyed = None
        opath = (*rpath, "operator")
        if callable(op):
            operator, name = op, getattr(op, "__name__", "callable")
        elif op == "partial":
            ints = {k: rule.get(k, d) for k, d in (("keep_first", 1), ("keep_last", 0))}
            for k, v in ints.items():
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise ctx.error((*rpath, k), "must be a whole number, 0 or more")
            operator, name = (
                operators.partial(
                    ints["keep_first"], ints["keep_last"], str(rule.get("fill", "*"))
                ),
                "partial",
            )
        elif op == "fixed":
            if "value" not in rule:
                raise ctx.error((*rpath, "value"), "operator fixed needs a 'value'")
            operator, name = operators.fixed(rule["value"]), "fixed"
        elif op == "hash":
            hkey = operators.hash_key(key, env)
            operator, name = operators.hash_with(hkey), "hash"
            keyed = functools.cache(functools.partial(operators.hash_with, hkey))
        elif isinstance(op, str) and op in operators.OPERATORS:
            operator, name = operators.OPERATORS[op], op
        else:
            known = ", ".join(sorted({*operators.OPERATORS, "partial", "fixed", "hash"}))
            raise ctx.error(opath, f"unknown operator {op!r} (operators: {known})")
        mode = rule.get("filter", "allow")
        if mode not in FILTERS:
            raise ctx.error(
                (*rpath, "filter"),
                f"must be one of {', '.join(FILTERS)} (how a masked identity's query may "
                f"use the column beyond showing it), not {mode!r}",
            )
        extra = (
            set(rule)
            - {"columns", "operator", "filter"}
            - (
                {"keep_first", "keep_last", "fill"}
                if op == "partial"
                else {"value"}
                if op == "fixed"
                else set()
            )
        )
        if extra:
            raise ctx.error((*rpath, sorted(extra)[0]), f"not a parameter of operator {name}")
        rules.append(ColumnRule(columns, operator, name, keyed, mode))
    scanner = None
    detectors = raw.get("detectors")
    if detectors is not None:
        dpath = (*path, "detectors")
        if detectors is True or detectors == "all":
            names = list(DETECTORS)
        elif detectors is False or detectors == []:
            names = []
        else:
            names = _strings(ctx, detectors, dpath)
            for i, n in enumerate(names):
                if n not in DETECTORS:
                    raise ctx.error(
                        (*dpath, i), f"unknown detector {n!r} (detectors: {', '.join(DETECTORS)})"
                    )
        scanner = Scanner(names) if names else None
    unmask = _keys(ctx, raw.get("unmask", {}), (*path, "unmask"), _UNMASK_KEYS, "unmask")
    roles = _strings(ctx, unmask["roles"], (*path, "unmask", "roles")) if "roles" in unmask else []
    users = _strings(ctx, unmask["users"], (*path, "unmask", "users")) if "users" in unmask else []
    return Masking(rules, scanner, roles, users)


def _merge_masking(
    raw: dict[str, Any] | None, masker: Masking | None, bases: list[Policy]
) -> tuple[dict[str, Any] | None, Masking | None]:
    """A policy's masking section on top of its presets': its rules first,
    then theirs; its detectors added to theirs unless it says ``[]`` (or
    false); its unmask and hash key when it gives them.

    Replacing the presets' section instead would let one added rule turn
    every preset detector off without a word.
    """
    raw = dict(raw or {})
    rules = list(masker.rules) if masker is not None else []
    merged = dict(raw)
    merged_rules = list(raw.get("rules", []))
    names: list[str] = []
    roles: set[str] = set(masker.unmask_roles) if masker is not None else set()
    users: set[str] = set(masker.unmask_users) if masker is not None else set()
    for base in bases:
        rules.extend(base.masker.rules if base.masker is not None else ())
        base_rules = base.masking.get("rules")
        if isinstance(base_rules, list):
            merged_rules.extend(base_rules)
        if base.masker is not None and base.masker.scanner is not None:
            names.extend(base.masker.scanner.names)
        for key in ("unmask", "hash_key", "hash_key_env"):
            if key not in raw and key in base.masking:
                merged[key] = base.masking[key]
        if "unmask" not in raw and base.masker is not None:
            roles |= base.masker.unmask_roles
            users |= base.masker.unmask_users
    own = raw.get("detectors")
    if own is False or own == []:
        names = []
    elif masker is not None and masker.scanner is not None:
        names.extend(masker.scanner.names)
    names = list(dict.fromkeys(names))
    if merged_rules:
        merged["rules"] = merged_rules
    if "detectors" not in raw or names:
        merged["detectors"] = names if names else []
    if not rules and not names and not roles and not users:
        return (merged or None), None
    scanner = Scanner(names) if names else None
    return merged, Masking(rules, scanner, sorted(roles), sorted(users))


def _audit(ctx: _Context, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The audit section, checked: where records go, whether they are required."""
    path: Path_ = ("audit",)
    for key in ("jsonl", "postgresql", "stream"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ctx.error((*path, key), "must be a non-empty string")
    jsonl, pg = raw.get("jsonl"), raw.get("postgresql")
    if jsonl and "://" in jsonl and not jsonl.startswith(("postgresql://", "postgres://")):
        raise ctx.error((*path, "jsonl"), "must be a file path or a postgresql:// URL")
    if pg and not pg.startswith(("postgresql://", "postgres://")):
        raise ctx.error((*path, "postgresql"), "must be a postgresql:// URL")
    if jsonl and pg:
        raise ctx.error((*path, "postgresql"), "give one audit sink: jsonl or postgresql")
    if "required" in raw:
        _bool(ctx, raw["required"], (*path, "required"))
    if "fsync" in raw:
        _choice(ctx, raw["fsync"], (*path, "fsync"), ("always", "never"))
    return dict(raw)


def _approvals(ctx: _Context, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The approvals section, checked: a store URL, a TTL, the webhooks told
    of new requests and the console that links point to."""
    store = raw.get("store")
    if store is not None and (
        not isinstance(store, str)
        or not store.startswith(("sqlite://", "postgresql://", "postgres://"))
    ):
        raise ctx.error(("approvals", "store"), "must be sqlite:///FILE or postgresql://...")
    if "ttl" in raw:
        try:
            seconds = parse_ttl(raw["ttl"])
        except (ValueError, OverflowError) as exc:
            raise ctx.error(("approvals", "ttl"), str(exc)) from None
        if seconds > MAX_TTL:
            raise ctx.error(("approvals", "ttl"), f"at most 366d, not {raw['ttl']!r}")
    if "approvers" in raw:
        raw = {**raw, "approvers": _approvers(ctx, raw["approvers"])}
    out = dict(raw)
    if "console_url" in raw:
        out["console_url"] = _http_url(ctx, raw["console_url"], ("approvals", "console_url"))
        if "?" in out["console_url"] or "#" in out["console_url"]:
            raise ctx.error(
                ("approvals", "console_url"),
                "must be the console's base URL: links append /approvals/<id>, so no ? or #",
            )
    if "notify" in raw:
        out["notify"] = _webhooks(ctx, raw["notify"], ("approvals", "notify"))
        if not store:
            raise ctx.error(
                ("approvals", "notify"), "needs approvals.store: only a stored request is waited on"
            )
    return out


def _http_url(ctx: _Context, value: Any, path: Path_) -> str:
    """An http(s) URL with a host and no credentials; errors never echo it
    (a Slack webhook's path is its token)."""
    if not isinstance(value, str) or not value:
        raise ctx.error(path, "must be an http:// or https:// URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError for a port out of range
    except ValueError as exc:
        raise ctx.error(path, f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ctx.error(path, f"must be an http:// or https:// URL, not a {parts.scheme!r} URL")
    if not parts.hostname:
        raise ctx.error(path, "must name a host")
    if "@" in parts.netloc:
        raise ctx.error(path, "must not carry credentials (user:password@); use a secret")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ctx.error(path, "must not contain spaces or control characters")
    return value


def _webhooks(ctx: _Context, value: Any, path: Path_) -> tuple[Webhook, ...]:
    """``approvals.notify``: webhooks told of each new request, checked here
    so a typo is found at load, not when the first query is held."""
    if not isinstance(value, list) or not value:
        raise ctx.error(path, "must be a non-empty list of webhooks ({url: ..., secret: ...})")
    hooks = []
    for i, item in enumerate(value):
        hpath = (*path, i)
        raw = _keys(ctx, item, hpath, _WEBHOOK_KEYS, "a webhook")
        if "url" not in raw:
            raise ctx.error((*hpath, "url"), "a webhook needs 'url'")
        url = _http_url(ctx, raw["url"], (*hpath, "url"))
        fmt = _choice(ctx, raw.get("format", "json"), (*hpath, "format"), FORMATS)
        secret = raw.get("secret")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise ctx.error((*hpath, "secret"), "must be a non-empty string")
        env = raw.get("secret_env")
        if env is not None and (not isinstance(env, str) or not _ENV_NAME.match(env)):
            raise ctx.error((*hpath, "secret_env"), "must be the name of an environment variable")
        if secret is not None and env is not None:
            raise ctx.error((*hpath, "secret_env"), "give one of secret and secret_env")
        if fmt == "json" and secret is None and env is None:
            raise ctx.error(
                (*hpath, "secret"),
                "a json webhook is signed: give secret or secret_env (an environment variable)",
            )
        timeout = raw.get("timeout", 5.0)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 60
        ):
            raise ctx.error((*hpath, "timeout"), f"must be seconds from 0 to 60, not {timeout!r}")
        hooks.append(
            Webhook(
                url,
                Secret(secret) if secret is not None else None,
                env,
                fmt,
                float(timeout),
            )
        )
    return tuple(hooks)


def _approvers(ctx: _Context, value: Any) -> dict[str, list[str]]:
    """``approvals.approvers``: who may decide held queries in the console,
    by role and by user; an empty section would let nobody decide, so it is
    refused rather than silently locking approvers out."""
    path: Path_ = ("approvals", "approvers")
    raw = _keys(ctx, value, path, {"roles", "users"}, "approvals.approvers")
    if not raw:
        raise ctx.error(path, "must name roles or users (e.g. {roles: [dba]})")
    return {key: _strings(ctx, raw[key], (*path, key)) for key in ("roles", "users") if key in raw}


_LIMIT_KEYS = {"statement_timeout", "max_rows", "max_statement_bytes"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: What the presets limit unless a policy says otherwise (engine-enforced).
PRESET_LIMITS: dict[str, dict[str, float]] = {
    "agent-safe": {"statement_timeout": 30.0, "max_rows": 10000},
    "readonly": {"statement_timeout": 30.0, "max_rows": 10000},
}


def _limits(
    ctx: _Context, top: Mapping[str, Any], bases: list[Policy], name: str | None
) -> dict[str, float]:
    """The ``limits:`` section: durations in seconds, over what the presets
    extended (and a preset's own defaults) set; a key given here wins."""
    merged: dict[str, float] = dict(PRESET_LIMITS.get(name or "", {}))
    for base in reversed(bases):
        merged.update(base.limits)
    if "limits" not in top:
        return merged
    raw = _section(ctx, top, "limits", _LIMIT_KEYS)
    for key, value in raw.items():
        path = ("limits", key)
        if key == "max_rows":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 10**9:
                raise ctx.error(path, f"must be a number of rows from 1 to 10**9, not {value!r}")
            merged[key] = value
            continue
        if key == "max_statement_bytes":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 2**30:
                raise ctx.error(path, f"must be a number of bytes from 1 to 2**30, not {value!r}")
            merged[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ctx.error(path, f"must be a duration like 5s, 500ms or 2m, not {value!r}")
        if isinstance(value, str):
            m = _DURATION.match(value)
            if m is None:
                raise ctx.error(path, f"must be a duration like 5s, 500ms or 2m, not {value!r}")
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            seconds = float(value)
        if not 0 < seconds < 86400 * 365:
            raise ctx.error(path, f"must be a positive duration, not {value!r}")
        merged[key] = seconds
    return merged


def _build(raw: Any, ctx: _Context, stack: tuple[str, ...] = ()) -> Policy:
    top = _keys(ctx, raw, (), _TOP_KEYS, "a policy")
    version = top.get("version", 1)
    if version != 1:
        raise ctx.error(("version",), f"unsupported policy version {version!r} (expected 1)")
    # A user's policy builds on agent-safe unless it says otherwise; the
    # presets themselves (a non-empty stack) start from nothing.
    extends = top.get("extends", [] if stack else list(DEFAULT_EXTENDS))
    if extends is None:
        raise ctx.error(("extends",), "must be a list of presets; write extends: [] to extend none")
    names = _strings(ctx, extends, ("extends",)) if extends != [] else []
    bases: list[Policy] = []
    for i, name in enumerate(names):
        if name not in PRESETS:
            raise ctx.error(
                ("extends", i), f"unknown preset {name!r} (presets: {', '.join(sorted(PRESETS))})"
            )
        if name in stack:
            raise ctx.error(("extends", i), f"preset {name!r} extends itself")
        bases.append(_build(PRESETS[name], _Context(f"<preset {name}>", {}), (*stack, name)))

    def inherit(key: str, fallback: Any) -> Any:
        if key in top:
            return top[key]
        for base in bases:
            return getattr(base, key)
        return fallback

    require = inherit("require_identity", False)
    if require not in (True, False, "verified"):
        raise ctx.error(("require_identity",), f"must be true, false or verified, not {require!r}")
    seen: set[str] = set()
    rules = _rules(ctx, top.get("rules", []), ("rules",), seen)
    for base in bases:
        rules.extend(r for r in base.rules if r.id not in seen)
        seen.update(r.id for r in base.rules)
    masking_raw = _section(ctx, top, "masking", _MASKING_KEYS) if "masking" in top else None
    masker = _masking(ctx, masking_raw) if masking_raw is not None else None
    if bases:
        masking_raw, masker = _merge_masking(masking_raw, masker, bases)
    return Policy(
        version=1,
        mode=_choice(ctx, inherit("mode", "enforce"), ("mode",), ("enforce", "report")),
        default=_choice(ctx, inherit("default", "allow"), ("default",), ACTIONS),
        on_unparsed=_choice(ctx, inherit("on_unparsed", "block"), ("on_unparsed",), ACTIONS),
        require_identity=require,
        rules=tuple(rules),
        masking=dict(masking_raw or {}),
        masker=masker,
        audit=_audit(ctx, _section(ctx, top, "audit", _AUDIT_KEYS))
        if "audit" in top
        else inherit("audit", {}),
        approvals=_approvals(ctx, _section(ctx, top, "approvals", _APPROVALS_KEYS))
        if "approvals" in top
        else inherit("approvals", {}),
        limits=_limits(ctx, top, bases, stack[-1] if stack else None),
        source=ctx.source,
        extends=tuple(names),
    )


def load_policy(source: PolicySource | None = None) -> Policy:
    """A validated Policy from a preset name, a YAML file path, a dict, or a Policy.

    ``None`` gives the secure default, the ``agent-safe`` preset. A file or a
    dict that does not say ``extends`` extends ``agent-safe`` too: what it
    writes is added to the preset. ``extends: []`` opts out, and then only
    what is written applies. A ``Policy`` object is taken as it is (its
    ``extends`` were resolved when it was loaded). A bare preset name
    (``"readonly"``, see ``is_preset_name``) is the preset, even if a file of
    that name exists: write ``./readonly`` for the file.
    """
    if isinstance(source, Policy):
        return source
    if source is None:
        return preset("agent-safe")
    if is_preset_name(source):
        return preset(str(source))
    raw, ctx = _read(source)
    return _checked(raw, ctx)


def is_preset_name(source: object) -> bool:
    """Whether ``source`` names a built-in preset rather than a file.

    Only a plain string that is exactly a preset's name: no path separator,
    no ``.yaml`` suffix, no ``PathLike``. So a file planted in the working
    directory under a preset's name never replaces the preset.
    """
    return type(source) is str and source in PRESETS


def _read(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Any, _Context]:
    """The raw policy data of a file or a dict, and where it came from."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_BYTES + 1)  # bounded: /dev/zero or a FIFO cannot fill memory
        except (OSError, ValueError) as exc:
            raise PolicyError(f"cannot read policy: {exc}", source=str(path), line=1) from None
        raw, lines = _compose(_decode(data, str(path)), str(path))
        return raw, _Context(str(path), lines)
    if isinstance(source, Mapping):
        return dict(source), _Context("<dict>", {})
    raise TypeError(
        f"a policy is a Policy, a preset name, a YAML path or a dict, not {type(source).__name__}"
    )


#: DDL that any policy meant to protect a database should refuse.
_DDL_PROBES = ("DROP TABLE guardeddb_probe", "CREATE TABLE guardeddb_probe (id int)")


def lint_policy(source: PolicySource) -> tuple[Policy, list[str]]:
    """Load ``source`` like ``load_policy`` and say what in it is likely a
    mistake: an empty file, or a policy that extends no preset and lets
    DDL run (for ``guardeddb policy validate``)."""
    if isinstance(source, Policy) or is_preset_name(source):
        return load_policy(source), []
    raw, ctx = _read(source)
    policy = _checked(raw, ctx)
    warnings: list[str] = []
    if raw is None or raw == {}:
        warnings.append(
            "the policy is empty: it is the agent-safe preset and nothing more "
            "(write extends: [] to mean no guardrails)"
        )
    if not policy.extends:
        anyone = Identity(user="someone", agent="some-agent")
        allowed = [
            sql
            for sql in _DDL_PROBES
            if policy.check(sql, anyone).action in ("allow", "warn") or policy.mode == "report"
        ]
        if allowed:
            warnings.append(
                "the policy extends no preset (extends: []) and does not block DDL: "
                f"{allowed[0].split(' guardeddb_probe')[0]} runs; add a rule blocking "
                "statements [ddl] or extend agent-safe"
            )
    return policy, warnings


def _checked(raw: Any, ctx: _Context) -> Policy:
    """_build, with any failure it did not foresee turned into a PolicyError:
    a caller that handles PolicyError (the instrumentor) must never meet another."""
    try:
        return _build(raw, ctx)
    except PolicyError:
        raise
    except Exception as exc:
        raise PolicyError(
            f"cannot load policy: {type(exc).__name__}: {exc}",
            source=ctx.source,
            line=min(ctx.lines.values(), default=1),
        ) from None


@functools.cache
def preset(name: str) -> Policy:
    """One of the built-in policies: ``readonly`` or ``agent-safe``.

    Built once per process: policies are immutable, and ``connect()`` without
    a policy would otherwise compile agent-safe (~0.6 ms) for every connection.
    """
    if name not in PRESETS:
        raise PolicyError(f"unknown preset {name!r} (presets: {', '.join(sorted(PRESETS))})")
    return _build(PRESETS[name], _Context(f"<preset {name}>", {}), (name,))
