"""The terminal listener: HTTP face, MAC verification, pipeline, outcomes, metrics, readiness.

The latency-critical path and nothing else; it calls into ledger and hsm and knows no other room."""
