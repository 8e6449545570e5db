"""The calibration engine: registry, traceability, correction, uncertainty, conformity.

Pure domain code: no network I/O, never imports ``gateway`` or ``drivers``.
"""
