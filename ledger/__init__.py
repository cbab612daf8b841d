"""PostgreSQL schema, migrations and the ledger's operations (authorization, reload, checks).

Imports nothing from `authorizer`: the server calls into the ledger, never the other way round.
"""
