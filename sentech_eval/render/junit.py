"""JUnit XML for CI systems: one test case per threshold of ``sentech-eval check``."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from sentech_eval.analysis.gate import CheckResult


def junit_xml(results: list[CheckResult], summary: str) -> ET.ElementTree:
    """JUnit XML: one testcase per threshold, a <failure> for each regression."""
    failures = sum(not r.passed for r in results)
    suites = ET.Element("testsuites", name="sentech-eval check", tests=str(len(results)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="sentech-eval check",
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        skipped="0",
    )
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="sentech_eval.check", name=r.name)
        if r.passed:
            ET.SubElement(case, "system-out").text = r.message
        else:
            failure = ET.SubElement(case, "failure", message=r.message, type="regression")
            failure.text = f"{r.name}: {r.message} (threshold {r.threshold})"
    ET.SubElement(suite, "system-out").text = summary
    tree = ET.ElementTree(suites)
    ET.indent(tree)
    return tree
