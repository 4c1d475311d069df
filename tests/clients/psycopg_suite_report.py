"""Summarises the junit XML files of tests/clients/psycopg_suite.sh.

    python3 psycopg_suite_report.py RESULTS_DIR TARGET...

Reads RESULTS_DIR/<target>.xml (pytest --junitxml with junit_family=xunit1, whose test cases
carry their file), and writes for each target:

    <target>.failed        node ids that failed or errored, one a line, sorted
    <target>.failures.tsv  node id, status (failed/error), first line of the message
    <target>.status.tsv    node id and status (passed/failed/error/skipped) of every test

then regressions.txt: per proxy target (every target but `direct`), the tests that passed
directly but failed or errored through that target, with their message. Prints a markdown
table `| target | passed | failed | errors | skipped |` and the regression counts.

A test counts once (pytest reports an error in teardown as a second test case): failed if
any of its cases failed, else error if any errored, else skipped if skipped, else passed.
A target whose XML is missing (pytest did not get to write it) is reported as such.
Standard library only.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

RANK = {"passed": 0, "skipped": 1, "error": 2, "failed": 3}


def node_id(case: ET.Element) -> str:
    """pytest's node id of a test case: file::Class::name (xunit1 puts the file in)."""
    file = case.get("file", "")
    classname = case.get("classname", "")
    name = case.get("name", "")
    module = file[:-3].replace("/", ".") if file.endswith(".py") else ""
    parts = [file] if file else [classname]
    if module and classname.startswith(module + "."):
        parts.append(classname[len(module) + 1 :].replace(".", "::"))
    parts.append(name)
    return "::".join(parts)


def first_line(elem: ET.Element) -> str:
    text = (elem.get("message") or elem.text or "").strip()
    line = text.splitlines()[0] if text else ""
    return " ".join(line.split())[:300]


def read_target(path: Path) -> dict[str, tuple[str, str]]:
    """node id -> (status, message) for one junit XML file."""
    results: dict[str, tuple[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        status, message = "passed", ""
        for tag, st in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                status, message = st, first_line(found)
                break
        nid = node_id(case)
        old = results.get(nid)
        if old is None or RANK[status] > RANK[old[0]]:
            results[nid] = (status, message)
    return results


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    targets = sys.argv[2:]
    table = ["| target | passed | failed | errors | skipped |", "| --- | --- | --- | --- | --- |"]
    data: dict[str, dict[str, tuple[str, str]]] = {}
    for target in targets:
        xml = out / f"{target}.xml"
        if not xml.exists():
            table.append(f"| {target} | no results ({xml.name} missing) | | | |")
            continue
        res = data[target] = read_target(xml)
        counts = {s: 0 for s in RANK}
        for status, _ in res.values():
            counts[status] += 1
        table.append(
            f"| {target} | {counts['passed']} | {counts['failed']} | {counts['error']} "
            f"| {counts['skipped']} |"
        )
        bad = sorted(n for n, (s, _) in res.items() if s in ("failed", "error"))
        (out / f"{target}.failed").write_text("".join(n + "\n" for n in bad))
        (out / f"{target}.failures.tsv").write_text(
            "".join(f"{n}\t{res[n][0]}\t{res[n][1]}\n" for n in bad)
        )
        (out / f"{target}.status.tsv").write_text(
            "".join(f"{n}\t{res[n][0]}\n" for n in sorted(res))
        )

    print("\n".join(table))
    direct = data.get("direct")
    if direct is None:
        print("\nno regressions computed: the direct target has no results")
        (out / "regressions.txt").write_text("no results for the direct target\n")
        return 0
    passed_direct = {n for n, (s, _) in direct.items() if s == "passed"}
    lines: list[str] = []
    summary: list[str] = []
    for target in targets:
        if target == "direct" or target not in data:
            continue
        res = data[target]
        regressed = sorted(
            n for n in passed_direct if res.get(n, ("missing", ""))[0] in ("failed", "error")
        )
        summary.append(f"{target} {len(regressed)}")
        lines.append(f"## {target}: {len(regressed)} passed direct, failed or errored here")
        lines += [f"{n}\t{res[n][0]}\t{res[n][1]}" for n in regressed]
        lines.append("")
    (out / "regressions.txt").write_text("\n".join(lines))
    print(f"\nregressions (passed direct, failed/errored through the proxy): {', '.join(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
