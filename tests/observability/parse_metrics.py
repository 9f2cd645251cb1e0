#!/usr/bin/python3
"""Fetches a /metrics page and parses it with the Prometheus client's text-format parser.

usage: parse_metrics.py URL [--token T]
Prints {"families": {name: type}, "samples": [[name, {label: value}, value], ...]} as JSON;
exits 1 (with the parser's error) when the text does not parse.
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    request = urllib.request.Request(url)
    if "--token" in sys.argv:
        request.add_header("Authorization", "Bearer " + sys.argv[sys.argv.index("--token") + 1])
    with urllib.request.urlopen(request, timeout=30) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode("utf-8")
    families, samples = {}, []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for s in family.samples:
            samples.append([s.name, dict(s.labels), s.value])
    json.dump({"content_type": content_type, "families": families, "samples": samples}, sys.stdout)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the parser's or the fetch's error, for the test's message
        print("parse_metrics: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        sys.exit(1)
