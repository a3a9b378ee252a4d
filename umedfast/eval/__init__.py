"""Evaluation: MAU metrics (accuracy, IoU, format), external benchmarks, paper-style tables and HTML reports."""
