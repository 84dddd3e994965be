#!/usr/bin/python3
"""Parses a Prometheus text exposition (stdin) with prometheus_client's own
parser, as a scraper would, and prints it as JSON for the Perl suites:
{"families": {name: {"type": ..., "help": ...}},
 "samples": [[sample name, {labels}, value], ...]}.
A text the parser refuses exits 1 with the parser's complaint."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    text = sys.stdin.read()
    families = {}
    samples = []
    try:
        for family in text_string_to_metric_families(text):
            if family.name in families:
                raise ValueError("family %s twice" % family.name)
            families[family.name] = {"type": family.type,
                                     "help": family.documentation}
            for s in family.samples:
                samples.append([s.name, s.labels, s.value])
    except Exception as e:  # the parser's own errors are plain exceptions
        print("unparsable: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    json.dump({"families": families, "samples": samples}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
