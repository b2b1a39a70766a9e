"""JUnit XML for CI systems: one test case per threshold of ``sentech-eval check``.

Every text (names and messages carry model and column names) goes through ``escaping.xml_text``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from sentech_eval.analysis.gate import CheckResult
from sentech_eval.escaping import xml_text


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
        case = ET.SubElement(suite, "testcase", classname="sentech_eval.check", name=xml_text(r.name))
        if r.passed:
            ET.SubElement(case, "system-out").text = xml_text(r.message)
        else:
            failure = ET.SubElement(case, "failure", message=xml_text(r.message), type="regression")
            failure.text = xml_text(f"{r.name}: {r.message} (threshold {r.threshold})")
    ET.SubElement(suite, "system-out").text = xml_text(summary)
    tree = ET.ElementTree(suites)
    ET.indent(tree)
    return tree
