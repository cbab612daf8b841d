"""How the authorizer names its keys in the HSM."""

BDK_ID_BYTES = 4


def bdk_alias(bdk_id: bytes) -> str:
    """A BDK is found from any KSN: the initial key id starts with the BDK id."""
    return f"bdk/{bdk_id.hex()}"


def bdk_id_of(alias: str) -> bytes:
    return bytes.fromhex(alias.removeprefix("bdk/"))


def kbpk_alias(terminal_id: str) -> str:
    """The terminal's key-block protection (transport) key, kept to wrap its next keys."""
    return f"kbpk/{terminal_id.lower()}"


# The HMAC-SHA-256 key that seals the journal (transfers and audit trail): made in the HSM by
# the first `hdfpay ledger seal`, never exported; each seal names the alias it was made with.
JOURNAL_SEAL_KEY_ALIAS = "journal/seal"
