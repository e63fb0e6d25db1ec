"""A seeded customers / orders / payments schema full of secrets, on every database."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .fix_db import Backend, _no_endless_lock_wait

CUSTOMERS = [
    # id, name, email, phone, ssn, card_number, iban, ip, notes
    (
        1,
        "Ada Lovelace",
        "ada.lovelace@example.com",
        "+44 20 7946 0958",
        "123-45-6789",
        "4111111111111111",
        "GB82WEST12345698765432",
        "192.168.10.21",
        "VIP; backup contact grace.h@example.org, card 5500 0000 0000 0004",
    ),
    (
        2,
        "Grace Hopper",
        "grace.hopper@example.net",
        "(212) 555-0143",
        "234-56-7891",
        "5555555555554444",
        "DE89370400440532013000",
        "10.20.30.40",
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJncmFjZSJ9.c2lnbmF0dXJlX3Nh",
    ),
    (
        3,
        "Alan Turing",
        "alan.turing@example.org",
        "+1 415 555 0199",
        "345-67-8912",
        "378282246310005",
        "FR1420041010050500013M02606",
        "172.16.5.9",
        "aws key AKIAIOSFODNN7EXAMPLE and password=Tur1ngMachine!",
    ),
]
PAYMENTS = [
    # id, customer_id, card_number, iban, token, amount
    (1, 1, "4012888888881881", "NL91ABNA0417164300", "tok_live_9f8e7d6c5b4a", 1200),
    (2, 2, "6011111111111117", "ES9121000418450200051332", "tok_live_1a2b3c4d5e6f", 990),
    (3, 3, "3530111333300000", "IT60X0542811101000000123456", "tok_live_77aa88bb99cc", 45000),
]

#: Every value that must never leave a guarded cursor unmasked.
SECRETS: list[str] = sorted(
    {str(c[i]) for c in CUSTOMERS for i in (2, 3, 4, 5, 6, 7)}
    | {str(p[i]) for p in PAYMENTS for i in (2, 3, 4)}
    | {
        "grace.h@example.org",
        "5500 0000 0000 0004",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJncmFjZSJ9.c2lnbmF0dXJlX3Nh",
        "AKIAIOSFODNN7EXAMPLE",
        "Tur1ngMachine!",
    }
)

SHOP_POLICY: dict[str, Any] = {
    "version": 1,
    "extends": [],  # masking under test, nothing else
    "on_unparsed": "allow",
    "masking": {
        "rules": [
            {"columns": ["*.email"], "operator": "email"},
            {"columns": ["*.ssn"], "operator": "redact"},
            {"columns": ["*.card_number"], "operator": "last4"},
            {"columns": ["*.iban"], "operator": "partial", "keep_first": 2, "keep_last": 0},
            {"columns": ["customers_*.phone"], "operator": "hash"},
            {"columns": ["payments_*.token"], "operator": "redact"},
            {"columns": ["*.ip"], "operator": "null"},
        ],
        "detectors": "all",
        "hash_key": "test-key",
        "unmask": {"roles": ["compliance"]},
    },
}


@dataclass
class Shop:
    backend: Backend
    customers: str
    payments: str

    def sql(self, text: str) -> str:
        return self.backend.sql(text.replace("{c}", self.customers).replace("{p}", self.payments))


@contextlib.contextmanager
def seeded(backend: Backend) -> Iterator[Shop]:
    """customers and payments tables seeded with SECRETS, dropped on exit."""
    tag = uuid.uuid4().hex[:8]
    s = Shop(backend, f"customers_{tag}", f"payments_{tag}")
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(
        f"CREATE TABLE {s.customers} (id INTEGER PRIMARY KEY, name VARCHAR(100), "
        "email VARCHAR(200), phone VARCHAR(50), ssn VARCHAR(20), card_number VARCHAR(30), "
        "iban VARCHAR(40), ip VARCHAR(40), notes VARCHAR(500))"
    )
    cur.execute(
        f"CREATE TABLE {s.payments} (id INTEGER PRIMARY KEY, customer_id INTEGER, "
        "card_number VARCHAR(30), iban VARCHAR(40), token VARCHAR(60), amount INTEGER)"
    )
    cur.executemany(s.sql("INSERT INTO {c} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"), CUSTOMERS)
    cur.executemany(s.sql("INSERT INTO {p} VALUES (?, ?, ?, ?, ?, ?)"), PAYMENTS)
    raw.commit()
    try:
        yield s
    finally:
        with contextlib.suppress(Exception):
            raw.rollback()
        cur = raw.cursor()
        _no_endless_lock_wait(backend, cur)
        cur.execute(f"DROP TABLE IF EXISTS {s.customers}")
        cur.execute(f"DROP TABLE IF EXISTS {s.payments}")
        raw.commit()
        raw.close()


@pytest.fixture
def shop(backend: Backend) -> Iterator[Shop]:
    """customers and payments tables seeded with SECRETS, dropped after the test."""
    with seeded(backend) as s:
        yield s
