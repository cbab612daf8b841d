"""Region operations: the operator API (one module per area), accounts and roles, terminal and
key provisioning, settlement and payout files. Knows nothing of the terminal listener."""
