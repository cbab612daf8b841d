"""HTTP framing of the protocol, shared by the server and every terminal."""

TERMINAL_PATH = "/v1/terminal"
TERMINAL_ID_HEADER = "HDF-Terminal-Id"
JSON_CONTENT_TYPE = "application/json"
