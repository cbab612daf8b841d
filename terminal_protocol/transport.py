"""HTTP framing of the protocol, shared by the server and every terminal: path, headers, and the
exact bytes each MAC covers."""

TERMINAL_PATH = "/v1/terminal"
TERMINAL_ID_HEADER = "HDF-Terminal-Id"
KSN_HEADER = "HDF-KSN"
MAC_HEADER = "HDF-MAC"
JSON_CONTENT_TYPE = "application/json"
MAC_BYTES = 8
KSN_HEX_CHARS = 24


def request_mac_input(method: str, path: str, ksn: bytes, body: bytes) -> bytes:
    """METHOD \\n PATH \\n KSN (upper-case hex) \\n the body's exact bytes."""
    return b"\n".join([method.encode("ascii"), path.encode("ascii"),
                       ksn.hex().upper().encode("ascii"), body])


def response_mac_input(ksn: bytes, status: int, body: bytes) -> bytes:
    """KSN of the request (upper-case hex) \\n HTTP status \\n the body's exact bytes."""
    return b"\n".join([ksn.hex().upper().encode("ascii"), str(status).encode("ascii"), body])
