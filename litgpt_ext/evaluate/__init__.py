"""Scoring generations against references: ``evaluate_generations``."""
