"""Evaluation reports (used by ``evaluate.py``)."""
