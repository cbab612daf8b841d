"""The terminal protocol: message model and codec, response codes, the terminal client.

Imports neither `ledger` nor `authorizer`: terminals and the server share only this package.
"""
