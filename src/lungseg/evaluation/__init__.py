"""Scoring models against ground truth and comparing them: metrics and their confidence
intervals, ``lungseg evaluate`` (:mod:`~lungseg.evaluation.evaluate`), ``lungseg compare``, and
the report with its plots.
"""
