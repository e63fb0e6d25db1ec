"""The masking leak corpus (issue #11): queries a masked identity may send to
recover a masked value, as data, so that growing it costs one line.

Each entry is ``(dialect, sql)``; ``{c}`` is the seeded customers table,
``{p}`` payments (see fix_shop.py). Columns masked there: email (email),
ssn (redact), card_number (last4), iban (partial), phone (hash), token
(redact; the API token of a payment) and ip (null). Most entries are
families: one template over every masked column, spelled per dialect.
``RAISES`` lists the entries expected to fail on the server (the
error-message channel): their exception text is judged instead of rows.
"""

from __future__ import annotations

DIALECTS = ("sqlite", "postgresql", "mysql")

#: Masked columns as (table placeholder, column): every template runs over each.
MASKED = [
    ("{c}", "email"),
    ("{c}", "ssn"),
    ("{c}", "card_number"),
    ("{c}", "phone"),
    ("{c}", "iban"),
    ("{p}", "token"),
]

# --- templates over one masked column {x}, per dialect (s, p, m)

_EVERYWHERE = [
    "substr({x}, 2)",
    "substr({x}, 3, 5)",
    "upper({x})",
    "lower({x})",
    "trim({x})",
    "replace({x}, '-', '')",
    "coalesce({x}, 'z')",
    "nullif({x}, 'z')",
    "CASE WHEN id > 0 THEN {x} ELSE 'n' END",
    "max({x})",
    "min(substr({x}, 1, 8))",
    "({x})",
]

_PER_DIALECT: dict[str, list[str]] = {
    "sqlite": [
        "{x} || ''",
        "ltrim({x}, 'x')",
        "rtrim({x}, 'x')",
        "substr({x}, -6)",
        "hex({x})",
        "quote({x})",
        "printf('%s', {x})",
        "format('%-40s|', {x})",
        "json_object('k', {x})",
        "json_array({x})",
        "json_quote({x})",
        "json_array({x}) ->> '$[0]'",
        "json_object('k', {x}) -> '$.k'",
        "json_extract(json_array({x}), '$[0]')",
        "json_group_array({x})",
        "json_group_object('k' || id, {x})",
        "group_concat({x}, '|')",
        "iif(id > 0, {x}, 'n')",
        "ifnull({x}, 'n')",
        "CAST({x} AS BLOB)",
        "CAST(replace(replace({x}, '-', ''), ' ', '') AS INTEGER)",
        "replace({x}, '-', '') + 0",
        "{x} COLLATE NOCASE",
        "first_value({x}) OVER (ORDER BY id)",
        "last_value({x}) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND "
        "UNBOUNDED FOLLOWING)",
        "lag({x}) OVER (ORDER BY id)",
        "nth_value({x}, 2) OVER ()",
        "unicode(substr({x}, 4))",
        "char(unicode(substr({x}, 2)), unicode(substr({x}, 3)))",
        "instr({x}, '5') || substr({x}, 1, 3)",
    ],
    "postgresql": [
        "{x} || ''",
        "left({x}, 6)",
        "right({x}, 6)",
        "reverse({x})",
        "translate({x}, '0123456789', 'abcdefghij')",
        "lpad({x}, 40, '*')",
        "rpad({x}, 40, '*')",
        "repeat({x}, 2)",
        "overlay({x} PLACING 'zz' FROM 2 FOR 1)",
        "position('5' IN {x})::text || {x}",
        "format('%s|', {x})",
        "concat_ws(',', {x}, id)",
        "split_part({x}, '@', 1)",
        "regexp_replace({x}, '[0-9]', '#', 'g')",
        "(regexp_match({x}, '[0-9]+'))[1]",
        "substring({x} FROM '[0-9A-Za-z]+')",
        "initcap({x})",
        "md5({x})",
        "encode(convert_to({x}, 'UTF8'), 'hex')",
        "encode(convert_to({x}, 'UTF8'), 'base64')",
        "sha256(convert_to({x}, 'UTF8'))",
        "convert_to({x}, 'UTF8')",
        "quote_literal({x})",
        "to_json({x})",
        "to_jsonb({x})::text",
        "json_build_object('k', {x})",
        "json_build_array({x}) ->> 0",
        "json_agg({x})",
        "jsonb_agg({x} ORDER BY id)",
        "array_agg({x})",
        "string_agg({x}, ',')",
        "ARRAY[{x}, 'z']",
        "array_to_string(ARRAY[{x}], ',')",
        "string_to_array({x}, '-')",
        "mode() WITHIN GROUP (ORDER BY {x})",
        "first_value({x}) OVER (ORDER BY id)",
        "last_value({x}) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND "
        "UNBOUNDED FOLLOWING)",
        "lead({x}) OVER (ORDER BY id)",
        '{x} COLLATE "C"',
        "{x}::varchar(60)",
        "CAST({x} AS char(60))",
        "NULLIF(regexp_replace({x}, '[^0-9]', '', 'g'), '')::numeric",
        "(SELECT {x})",
    ],
    "mysql": [
        "left({x}, 6)",
        "right({x}, 6)",
        "reverse({x})",
        "lpad({x}, 40, '*')",
        "rpad({x}, 40, '*')",
        "repeat({x}, 2)",
        "insert({x}, 2, 1, 'zz')",
        "concat(locate('5', {x}), {x})",
        "concat('x', {x})",
        "concat_ws(',', {x}, id)",
        "substring_index({x}, '@', 1)",
        "regexp_replace({x}, '[0-9]', '#')",
        "regexp_substr({x}, '[0-9]+')",
        "mid({x}, 2, 9)",
        "elt(1, {x}, 'z')",
        "hex({x})",
        "to_base64({x})",
        "md5({x})",
        "sha1({x})",
        "sha2({x}, 256)",
        "crc32({x})",
        "json_object('k', {x})",
        "json_array({x})",
        "JSON_ARRAYAGG({x})",
        "JSON_OBJECTAGG(concat('k', id), {x})",
        "json_unquote(json_extract(json_array({x}), '$[0]'))",
        "json_quote({x})",
        "group_concat({x} SEPARATOR '|')",
        "CAST({x} AS CHAR(60))",
        "convert({x} USING utf8mb4)",
        "{x} COLLATE utf8mb4_bin",
        "BINARY {x}",
        "quote({x})",
        "IF(id > 0, {x}, 'n')",
        "IFNULL({x}, 'n')",
        "GREATEST({x}, '')",
        "first_value({x}) OVER (ORDER BY id)",
        "lag({x}) OVER (ORDER BY id)",
        "CAST(replace(replace({x}, '-', ''), ' ', '') AS DECIMAL(40, 0))",
        "soundex({x})",
        "weight_string({x})",
        "aes_encrypt({x}, 'k')",
    ],
}

_CODE = {"sqlite": "s", "postgresql": "p", "mysql": "m"}


def _templated() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for dialect in DIALECTS:
        for template in _EVERYWHERE + _PER_DIALECT[dialect]:
            for table, column in MASKED:
                out.append((dialect, f"SELECT {template.format(x=column)} FROM {table}"))
    return out


# --- structural families, written once with the dialects they run on

_STRUCTURE: list[tuple[str, str]] = [
    # CTEs with column lists, renaming by position.
    ("WITH x(a, b) AS (SELECT name, replace(ssn, '-', '+') FROM {c}) SELECT b FROM x", "spm"),
    ("WITH x(a, b) AS (SELECT email, name FROM {c}) SELECT substr(a, 1, 40) FROM x", "spm"),
    ("WITH x(b, a) AS (SELECT iban, name FROM {c}) SELECT b, a FROM x", "spm"),
    ("WITH x(a) AS (SELECT card_number FROM {c}) SELECT a, a FROM x", "spm"),
    (
        "WITH x(a) AS (SELECT phone FROM {c}), y(b) AS (SELECT a FROM x) SELECT upper(b) FROM y",
        "spm",
    ),
    ("WITH x(name) AS (SELECT ssn FROM {c}) SELECT name FROM x", "spm"),
    ("WITH x(k, v) AS (SELECT id, token FROM {p}) SELECT x.v FROM x", "spm"),
    # Recursive CTEs: one character per step.
    (
        "WITH RECURSIVE r(n, s) AS (SELECT 1, substr(ssn, 1, 1) FROM {c} WHERE id = 1 "
        "UNION ALL SELECT n + 1, substr(ssn, n + 1, 1) FROM r, {c} WHERE id = 1 AND n < 11) "
        "SELECT s FROM r",
        "spm",
    ),
    (
        "WITH RECURSIVE r(n, s) AS (SELECT 1, card_number FROM {c} "
        "UNION ALL SELECT n + 1, s FROM r WHERE n < 2) SELECT s FROM r",
        "spm",
    ),
    (
        "WITH RECURSIVE r(n, s) AS (SELECT 1, CAST('' AS CHAR(60)) "
        "UNION ALL SELECT n + 1, CAST(concat(s, (SELECT substr(email, n, 1) FROM {c} "
        "WHERE id = 1)) AS CHAR(60)) FROM r WHERE n < 25) SELECT s FROM r",
        "m",
    ),
    (
        "WITH RECURSIVE r(n, s) AS (SELECT 1, '' UNION ALL SELECT n + 1, s || "
        "(SELECT substr(email, n, 1) FROM {c} WHERE id = 1) FROM r WHERE n < 25) "
        "SELECT s FROM r",
        "s",
    ),
    (
        "WITH RECURSIVE r(n, s) AS (SELECT 1, ''::text UNION ALL SELECT n + 1, s || "
        "(SELECT substr(email, n, 1) FROM {c} WHERE id = 1) FROM r WHERE n < 25) "
        "SELECT s FROM r",
        "p",
    ),
    # Derived tables, with and without alias column lists.
    ("SELECT t.b FROM (SELECT name, email FROM {c}) AS t(a, b)", "p"),
    ("SELECT b FROM (SELECT replace(ssn, '-', '') , 1 FROM {c}) AS t(b, one)", "p"),
    ("SELECT t.* FROM (SELECT * FROM {c}) AS t(i, n, e, s)", "p"),
    ("SELECT t.e FROM (SELECT * FROM {c}) AS t(i, n, e, s)", "p"),
    ("SELECT t.ph FROM (SELECT * FROM {c}) AS t(i, n, e, ph, s, k)", "p"),
    ("SELECT x FROM (SELECT ssn AS x FROM {c}) s", "spm"),
    ("SELECT upper(x) FROM (SELECT ssn AS x FROM {c}) s", "spm"),
    ("SELECT x FROM (SELECT substr(card_number, 1, 12) AS x FROM {c}) s", "spm"),
    ("SELECT s.* FROM (SELECT name, iban FROM {c}) s", "spm"),
    ("SELECT * FROM (SELECT * FROM {c}) s", "spm"),
    ("WITH x AS (SELECT * FROM {c}) SELECT * FROM x", "spm"),
    ("WITH x(a, b, c, d, e, f, g, h, i) AS (SELECT * FROM {c}) SELECT d FROM x", "spm"),
    ("WITH x(a, b, c, d, e, f, g, h, i) AS (SELECT * FROM {c}) SELECT g FROM x", "spm"),
    (
        "WITH x(a, b, c, d, e, f, g, h, i) AS (SELECT * FROM {c}) SELECT substr(f, 1, 6) FROM x",
        "spm",
    ),
    # USING / NATURAL merge columns: positions are no longer the catalog's.
    *[
        (
            "WITH x(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14) AS "
            f"(SELECT * FROM {{c}} JOIN {{p}} USING (id)) SELECT {a} FROM x",
            "spm",
        )
        for a in ("a10", "a11", "a12", "a13", "substr(a11, 1, 8)")
    ],
    ("SELECT * FROM {c} JOIN {p} USING (id)", "spm"),
    ("SELECT * FROM {c} NATURAL JOIN (SELECT id, token FROM {p}) p", "spm"),
    ("SELECT * FROM {c} AS t(i, n, e)", "p"),
    ("SELECT t.e FROM {c} AS t(i, n, e)", "p"),
    # LATERAL (PostgreSQL; MariaDB has none).
    ("SELECT l.v FROM {c} c CROSS JOIN LATERAL (SELECT substr(c.ssn, 1, 6) AS v) l", "p"),
    ("SELECT l.* FROM {c} c, LATERAL (SELECT c.iban AS v, c.name AS w) l", "p"),
    ("SELECT l.v FROM {c} c, LATERAL (SELECT c.email AS v) l", "p"),
    ("SELECT l.a FROM {c} c, LATERAL (SELECT c.card_number) AS l(a)", "p"),
    # Table functions over JSON.
    ("SELECT j.value FROM {c} c, json_each_text(json_build_object('e', c.email)) j", "p"),
    ("SELECT j.value FROM {c} c, jsonb_array_elements_text(jsonb_build_array(c.ssn)) j", "p"),
    (
        "SELECT r.a FROM {c} c, jsonb_to_recordset(jsonb_build_array(jsonb_build_object("
        "'a', c.card_number))) AS r(a text)",
        "p",
    ),
    ("SELECT r.* FROM {c} c, json_to_record(json_build_object('a', c.iban)) AS r(a text)", "p"),
    (
        "SELECT * FROM jsonb_to_recordset((SELECT jsonb_agg(jsonb_build_object('t', token)) "
        "FROM {p})) AS r(t text)",
        "p",
    ),
    ("SELECT to_jsonb(c) ->> 'ssn' FROM {c} c", "p"),
    ("SELECT row_to_json(c)::text FROM {c} c", "p"),
    ("SELECT (json_build_object('e', email)) ->> 'e' FROM {c}", "p"),
    ("SELECT value FROM {c} c, json_each(json_array(c.email))", "s"),
    ("SELECT j.value FROM {c} c, json_each(json_object('k', c.iban)) j", "s"),
    ("SELECT j.atom FROM {p} p, json_tree(json_array(p.token)) j", "s"),
    ("SELECT j.key, j.value FROM json_each((SELECT json_group_object(name, ssn) FROM {c})) j", "s"),
    ("SELECT json_object('e', email) ->> '$.e' FROM {c}", "s"),
    ("SELECT '{}' -> email FROM {c}", "s"),
    (
        "SELECT jt.v FROM {c} c, JSON_TABLE(JSON_ARRAY(c.iban), '$[*]' "
        "COLUMNS (v VARCHAR(60) PATH '$')) AS jt",
        "m",
    ),
    (
        "SELECT jt.v FROM JSON_TABLE((SELECT JSON_ARRAYAGG(token) FROM {p}), '$[*]' "
        "COLUMNS (v VARCHAR(60) PATH '$')) AS jt",
        "m",
    ),
    (
        "SELECT jt.* FROM JSON_TABLE((SELECT JSON_ARRAYAGG(JSON_OBJECT('s', ssn)) FROM {c}), "
        "'$[*]' COLUMNS (n FOR ORDINALITY, s VARCHAR(60) PATH '$.s')) AS jt",
        "m",
    ),
    ("SELECT json_value(json_object('e', email), '$.e') FROM {c}", "m"),
    # Arrays and set-returning functions.
    ("SELECT unnest(ARRAY[ssn, email]) FROM {c}", "p"),
    ("SELECT u FROM {c} c, unnest(string_to_array(c.ssn, '-')) AS u", "p"),
    ("SELECT * FROM unnest((SELECT array_agg(card_number) FROM {c}))", "p"),
    ("SELECT regexp_split_to_table(iban, '') FROM {c}", "p"),
    ("SELECT substr(phone, g, 3) FROM {c}, generate_series(1, 16) g", "p"),
    ("SELECT (SELECT array_agg(email) FROM {c})[1]", "p"),
    ("SELECT u.x FROM unnest(ARRAY(SELECT iban FROM {c})) WITH ORDINALITY AS u(x, n)", "p"),
    # VALUES.
    ("SELECT * FROM (VALUES ((SELECT max(ssn) FROM {c}))) AS v(x)", "p"),
    ("SELECT x FROM {c} c, LATERAL (VALUES (c.email), (c.name)) AS v(x)", "p"),
    ("SELECT * FROM (VALUES ((SELECT max(token) FROM {p})))", "s"),
    ("SELECT * FROM (VALUES ((SELECT max(iban) FROM {c}))) t", "m"),
    ("SELECT column1 FROM (VALUES ('a'), ((SELECT min(email) FROM {c})))", "s"),
    # UNION / INTERSECT / EXCEPT.
    ("SELECT ssn FROM {c} INTERSECT SELECT ssn FROM {c}", "spm"),
    ("SELECT email FROM {c} EXCEPT SELECT name FROM {c}", "spm"),
    ("SELECT iban FROM {c} UNION ALL SELECT substr(iban, 3) FROM {c}", "spm"),
    ("SELECT name FROM {c} UNION SELECT card_number FROM {p}", "spm"),
    ("SELECT token FROM {p} UNION SELECT ssn FROM {c}", "spm"),
    ("SELECT name, email FROM {c} UNION ALL SELECT email, name FROM {c}", "spm"),
    ("SELECT * FROM (SELECT phone FROM {c} UNION ALL SELECT notes FROM {c}) u", "spm"),
    ("SELECT * FROM {c} UNION ALL SELECT * FROM {c}", "spm"),
    # Subqueries in the select list, EXISTS, IN, ORDER BY.
    ("SELECT (SELECT email FROM {c} WHERE id = 1)", "spm"),
    ("SELECT name, (SELECT c2.ssn FROM {c} c2 WHERE c2.id = c.id) FROM {c} c", "spm"),
    ("SELECT (SELECT max(token) FROM {p}) AS token", "spm"),
    ("SELECT name FROM {c} WHERE EXISTS (SELECT 1 FROM {p} WHERE token IS NOT NULL)", "spm"),
    ("SELECT name, ssn IN (SELECT ssn FROM {c}) FROM {c}", "spm"),
    ("SELECT email FROM {c} ORDER BY substr(email, 3)", "spm"),
    ("SELECT name FROM {c} ORDER BY ssn DESC", "spm"),
    ("SELECT card_number FROM {c} ORDER BY card_number LIMIT 1", "spm"),
    ("SELECT c.email, p.card_number FROM {c} c JOIN {p} p ON p.customer_id = c.id", "spm"),
    ("SELECT c.ssn, p.iban FROM {c} c LEFT JOIN {p} p ON p.iban = c.iban", "spm"),
    ("SELECT email AS name, name AS email FROM {c}", "spm"),
    ("SELECT DISTINCT substr(iban, 1, 6) FROM {c}", "spm"),
    ("SELECT count(*), ssn FROM {c} GROUP BY ssn", "spm"),
    ("SELECT max(name) FROM {c} GROUP BY email", "spm"),
    ("SELECT phone FROM {c} GROUP BY phone HAVING count(*) > 0", "spm"),
    ("SELECT c FROM {c} c", "p"),
    ("SELECT c::text FROM {c} c", "p"),
    ("SELECT ROW(c.*)::text FROM {c} c", "p"),
]

# The error-message channel: each of these fails on the server, and the
# driver's message would quote a masked value.
_ERRORS: list[tuple[str, str]] = [
    ("SELECT ssn::int FROM {c}", "p"),
    ("SELECT card_number::int FROM {c}", "p"),
    ("SELECT card_number::smallint FROM {p}", "p"),
    ("SELECT email::date FROM {c}", "p"),
    ("SELECT phone::uuid FROM {c}", "p"),
    ("SELECT iban::numeric FROM {c}", "p"),
    ("SELECT ssn::json FROM {c}", "p"),
    ("SELECT email::inet FROM {c}", "p"),
    ("SELECT token::timestamp FROM {p}", "p"),
    ("SELECT ssn::regclass FROM {c}", "p"),
    ("SELECT email::regtype FROM {c}", "p"),
    ("SELECT ('x' || iban)::bit(3) FROM {c}", "p"),
    ("SELECT 1 FROM {c} WHERE ssn::int > 0", "p"),
    ("SELECT (SELECT max(token) FROM {p})::int", "p"),
    ("SELECT json_extract('{}', ssn) FROM {c}", "s"),
    ("SELECT json_extract('{}', email) FROM {c}", "s"),
    ("SELECT json_extract('{}', card_number) FROM {c}", "s"),
    ("SELECT json_extract('{}', token) FROM {p}", "s"),
    ("SELECT json(ssn) FROM {c}", "s"),
    ("SELECT json(iban) FROM {c}", "s"),
    ("SELECT json_set('{}', phone, 1) FROM {c}", "s"),
    ("SELECT json_remove('{}', iban) FROM {c}", "s"),
    ("SELECT * FROM {c} c, json_tree('{}', c.ssn)", "s"),
    ("SELECT extractvalue(1, concat(0x7e, (SELECT ssn FROM {c} LIMIT 1)))", "m"),
    ("SELECT extractvalue(1, concat(0x7e, (SELECT token FROM {p} LIMIT 1)))", "m"),
    ("SELECT updatexml(1, concat(0x7e, (SELECT card_number FROM {c} LIMIT 1)), 1)", "m"),
    ("SELECT extractvalue(1, concat(0x7e, substr((SELECT email FROM {c} LIMIT 1), 10)))", "m"),
    ("SELECT updatexml(1, concat(0x7e, (SELECT phone FROM {c} LIMIT 1)), 1)", "m"),
    ("SELECT extractvalue(1, concat(0x7e, (SELECT iban FROM {c} WHERE id = 2)))", "m"),
]

RAISES: frozenset[tuple[str, str]] = frozenset(
    (dialect, sql) for sql, where in _ERRORS for dialect in DIALECTS if _CODE[dialect] in where
)

#: Every entry: (dialect, sql).
CORPUS: list[tuple[str, str]] = [
    *_templated(),
    *[(d, sql) for sql, where in _STRUCTURE for d in DIALECTS if _CODE[d] in where],
    *sorted(RAISES),
]
