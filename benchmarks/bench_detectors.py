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


def _secret_part(pos: list[Sample]) -> list[Sample]:
    return [p for p in pos if p.entities & SECRETS]


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
    payload: dict[str, Any] = {
        "positives": len(pos),
        "negatives": len(neg),
        "guardeddb": _as_json(result),
        "cells_per_s": len(cells) / elapsed,
        "us_per_cell": per_cell_us,
    }

    secret_pos = _secret_part(pos)
    ours = score(lambda t: scanner.scan(t)[0], secret_pos, neg)
    theirs_mask = _detect_secrets_mask()
    if theirs_mask is None:
        print("detect-secrets: not installed (pip install 'guardeddb[bench]'), no comparison")
    else:
        theirs = score(theirs_mask, secret_pos, neg)
        print(f"secrets only ({len(secret_pos)} positives): guardeddb vs detect-secrets")
        for e, n in ours.total.items():
            print(f"  {e:16} recall {ours.found[e] / n:.3f}  vs {theirs.found[e] / n:.3f}")
        print(f"  {'overall':16} recall {ours.recall:.3f}  vs {theirs.recall:.3f}")
        print(f"  {'false positives':16} rate   {ours.fp_rate:.3f}  vs {theirs.fp_rate:.3f}")
        for k, n in theirs.checked.items():
            if theirs.flagged[k]:
                print(f"    detect-secrets FP on {k}: {theirs.flagged[k]}/{n}")
        start = time.perf_counter()
        for c in cells:
            theirs_mask(c)
        their_elapsed = time.perf_counter() - start
        print(f"  detect-secrets cost: {len(cells) / their_elapsed:,.0f} cells/s")
        payload["detect_secrets"] = {
            "secrets_only": _as_json(theirs),
            "guardeddb_secrets_only": _as_json(ours),
            "cells_per_s": len(cells) / their_elapsed,
        }
    if args.json:
        write_json(args.json, payload)


if __name__ == "__main__":
    main()
