"""Detector quality and cost on the labelled corpus (tests/detector_corpus.py).

Prints recall per entity, the false-positive rate per kind of negative text,
and the scan cost of every detector together (cells/s, microseconds per cell).
When detect-secrets is installed (the ``bench`` extra), its default plugins
run over the secrets part of the corpus too, for comparison.

    python benchmarks/bench_detectors.py [--rounds N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_query import write_json
from guardeddb.masking import DETECTORS, Scanner
from tests.detector_corpus import Sample, Score, negatives, positives, score

# The entities detect-secrets also looks for (its default plugins).
SECRETS = {
    "jwt",
    "aws_access_key",
    "aws_secret_key",
    "api_token",
    "private_key",
    "secret",
    "basic_auth",
}


def _detect_secrets_mask() -> Any:
    """A text -> masked text function from detect-secrets' default plugins
    scanning each line as a line of a file (its ``scan_file`` mode, not the
    eager ad hoc mode that reports every high-entropy word), or None when it
    is not installed."""
    try:  # imported by name: an optional dependency without type stubs
        scan = importlib.import_module("detect_secrets.core.scan")
        settings = importlib.import_module("detect_secrets.settings")
    except ImportError:
        return None

    def mask(text: str) -> str:
        lines = text.splitlines()
        found = []
        with settings.default_settings():
            for n, line in enumerate(lines, 1):
                context = scan.get_code_snippet(lines=lines, line_number=n)
                for plugin in scan.get_plugins():
                    for secret in scan._scan_line(
                        plugin=plugin,
                        filename="corpus.txt",
                        line=line,
                        line_number=n,
                        enable_eager_search=False,
                        context=context,
                    ):
                        if not scan._is_filtered_out(
                            required_filter_parameters=["context"],
                            filename=secret.filename,
                            secret=secret.secret_value,
                            plugin=plugin,
                            line=line,
                            context=context,
                        ):
                            found.append(secret.secret_value)
        for value in found:
            if value:
                text = text.replace(value, "[REDACTED]")
        return text

    return mask


def _presidio_mask() -> Any:
    """A text -> masked text function from Presidio's pattern recognizers for
    the PII entities (no NLP model: no context words raise or lower scores,
    every match counts), or None when presidio-analyzer is not installed."""
    try:  # imported by name: an optional dependency without type stubs
        tldextract: Any = importlib.import_module("tldextract")
        recognizers = importlib.import_module("presidio_analyzer.predefined_recognizers")
    except ImportError:
        return None
    # The email recognizer checks domains with tldextract: its bundled suffix
    # list, never a download.
    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())
    found_by = [
        getattr(recognizers, name)()
        for name in (
            "CreditCardRecognizer",
            "UsSsnRecognizer",
            "IbanRecognizer",
            "EmailRecognizer",
            "PhoneRecognizer",
            "IpRecognizer",
        )
    ]

    def mask(text: str) -> str:
        spans = sorted(
            (r.start, r.end)
            for rec in found_by
            for r in rec.analyze(text, rec.supported_entities, None)
        )
        out, pos = [], 0
        for a, b in spans:
            if b <= pos:
                continue
            out.append(text[pos : max(a, pos)] + "[REDACTED]")
            pos = b
        return "".join(out) + text[pos:]

    return mask


def _compare(
    name: str, theirs_mask: Any, pos: list[Sample], neg: list[Sample], ours: Score
) -> dict[str, Any]:
    """Print and return ``theirs_mask``'s scores next to guardeddb's ``ours``."""
    theirs = score(theirs_mask, pos, neg)
    print(f"{len(pos)} positives and {len(neg)} negatives: guardeddb vs {name}")
    for e, n in ours.total.items():
        print(f"  {e:16} recall {ours.found[e] / n:.3f}  vs {theirs.found[e] / n:.3f}")
    print(f"  {'overall':16} recall {ours.recall:.3f}  vs {theirs.recall:.3f}")
    print(f"  {'false positives':16} rate   {ours.fp_rate:.3f}  vs {theirs.fp_rate:.3f}")
    for k, n in theirs.checked.items():
        if theirs.flagged[k]:
            print(f"    {name} FP on {k}: {theirs.flagged[k]}/{n}")
    cells = [s.text for s in pos + neg]
    start = time.perf_counter()
    for c in cells:
        theirs_mask(c)
    elapsed = time.perf_counter() - start
    print(f"  {name} cost: {len(cells) / elapsed:,.0f} cells/s")
    return {
        "theirs": _as_json(theirs),
        "guardeddb": _as_json(ours),
        "cells_per_s": len(cells) / elapsed,
    }


def _as_json(result: Score) -> dict[str, Any]:
    return {
        "recall": result.recall,
        "fp_rate": result.fp_rate,
        "recall_by_entity": {e: result.found[e] / n for e, n in result.total.items()},
        "fp_by_kind": {k: result.flagged[k] / n for k, n in result.checked.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one round, a small corpus")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    pos = positives(per_entity=8 if args.quick else 40)
    neg = negatives(per_kind=20 if args.quick else 150)
    rounds = 1 if args.quick else args.rounds
    scanner = Scanner(DETECTORS)
    result = score(lambda t: scanner.scan(t)[0], pos, neg)
    print(f"guardeddb detectors on {len(pos)} positives and {len(neg)} negatives")
    print(result.table())

    cells = [s.text for s in pos + neg]
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for c in cells:
            scanner.scan(c)
        samples.append(time.perf_counter() - start)
    elapsed = statistics.median(samples)
    per_cell_us = elapsed / len(cells) * 1e6
    print(
        f"scan cost: {len(cells) / elapsed:,.0f} cells/s, {per_cell_us:.1f} us per cell "
        f"(median of {rounds} rounds over {len(cells)} cells)"
    )
    batch = []
    for _ in range(rounds):
        start = time.perf_counter()
        scanner.scan_many(cells)  # the corpus as one fetched column
        batch.append(time.perf_counter() - start)
    batch_elapsed = statistics.median(batch)
    print(
        f"scan cost as one column (scan_many): {len(cells) / batch_elapsed:,.0f} cells/s, "
        f"{batch_elapsed / len(cells) * 1e6:.1f} us per cell"
    )
    payload: dict[str, Any] = {
        "positives": len(pos),
        "negatives": len(neg),
        "guardeddb": _as_json(result),
        "cells_per_s": len(cells) / elapsed,
        "us_per_cell": per_cell_us,
        "batch_cells_per_s": len(cells) / batch_elapsed,
    }

    secret_pos = [p for p in pos if p.entities & SECRETS]
    detect_secrets = _detect_secrets_mask()
    if detect_secrets is None:
        print("detect-secrets: not installed (pip install 'guardeddb[bench]'), no comparison")
    else:
        ours = score(lambda t: scanner.scan(t)[0], secret_pos, neg)
        payload["detect_secrets"] = _compare(
            "detect-secrets", detect_secrets, secret_pos, neg, ours
        )
    pii_pos = [p for p in pos if not p.entities & SECRETS]
    presidio = _presidio_mask()
    if presidio is None:
        print("presidio-analyzer: not installed (pip install 'guardeddb[bench]'), no comparison")
    else:
        ours = score(lambda t: scanner.scan(t)[0], pii_pos, neg)
        payload["presidio"] = _compare("presidio", presidio, pii_pos, neg, ours)
    if args.json:
        write_json(args.json, payload)


if __name__ == "__main__":
    main()
