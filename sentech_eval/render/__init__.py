"""Presentation: markdown, HTML, JUnit XML and plots built from ``analysis`` results.

Imports core and ``analysis`` only.
"""
