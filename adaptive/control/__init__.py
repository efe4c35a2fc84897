"""The slow level of control: telemetry and liveness, calibration, decision rules, metrics.

A controller turns the cluster's telemetry into a decision rule per source node (the fast level,
:mod:`adaptive.runtime.source`, applies it per request) and a default plan for the audit trail.
"""
