"""Seeing the algorithm: per-network cards (:mod:`phasespace.report.card`, ``phasespace show``) and
the self-contained HTML page of a sweep (:mod:`phasespace.report.page`, ``phasespace report``)."""
