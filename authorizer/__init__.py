"""The authorization server: terminal endpoint, pipeline, CLI. Calls into ledger and hsm."""
