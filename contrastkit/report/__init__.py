"""Static HTML reports of a run, two runs or a study: ``contrastkit report RUN|STUDY --out DIR``
(:func:`build_report`). Jinja2 templates (package data under ``templates/``), matplotlib curves,
nothing loaded from the network."""

from contrastkit.report.build import build_report

__all__ = ["build_report"]
