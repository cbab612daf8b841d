"""TR-31 key blocks, version D (AES), through psec: how keys travel to and from terminals.

psec checks the block's integrity and its KBPK, not what the header claims, so this module also
checks that the key usage and the mode of use fit together before any key is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psec import tr31

from hsm.interface import AES_KEY_BYTES, INITIAL_KEY_ID_BYTES, KeyBlockError, KeyUsage

VERSION_AES = "D"
ALGORITHM_AES = "A"
NOT_EXPORTABLE = "N"
KEY_VERSION_NONE = "00"
INITIAL_KEY_ID_BLOCK = "IK"          # ANSI X9.143 optional block: AES-DUKPT initial key ID, hex

# Modes of use that TR-31 allows for each usage we hold (B both ways, D decrypt/unwrap only,
# E encrypt/wrap only, C generate and verify, G generate only, V verify only, X derivation).
ALLOWED_MODES: dict[KeyUsage, frozenset[str]] = {
    KeyUsage.BDK: frozenset("X"),
    KeyUsage.DUKPT_INITIAL_KEY: frozenset("X"),
    KeyUsage.KEY_BLOCK_PROTECTION: frozenset("BDE"),
    KeyUsage.MAC: frozenset("CGV"),
    KeyUsage.HMAC: frozenset("CGV"),
}
FULL_MODE: dict[KeyUsage, str] = {
    KeyUsage.BDK: "X",
    KeyUsage.DUKPT_INITIAL_KEY: "X",
    KeyUsage.KEY_BLOCK_PROTECTION: "B",
    KeyUsage.MAC: "C",
    KeyUsage.HMAC: "C",
}
# Made inside the HSM and never exchanged: a key block of these usages is refused.
NEVER_IMPORTED = frozenset({KeyUsage.HMAC})
WRAP_MODES = frozenset("BE")         # a KBPK may wrap keys for export
UNWRAP_MODES = frozenset("BD")       # a KBPK may unwrap keys for import


@dataclass(frozen=True)
class UnwrappedKey:
    usage: KeyUsage
    mode_of_use: str
    key: bytes = field(repr=False)
    initial_key_id: bytes | None = None


def wrap(kbpk: bytes, usage: KeyUsage, mode_of_use: str, key: bytes,
         initial_key_id: bytes | None = None) -> str:
    """A version D block, not exportable by the receiver; a B1 block carries its initial key ID
    in the optional block IK so that the terminal can build its KSNs."""
    _check_mode(usage, mode_of_use)
    header = tr31.Header(version_id=VERSION_AES, key_usage=usage.value, algorithm=ALGORITHM_AES,
                         mode_of_use=mode_of_use, version_num=KEY_VERSION_NONE,
                         exportability=NOT_EXPORTABLE)
    if initial_key_id is not None:
        if usage is not KeyUsage.DUKPT_INITIAL_KEY or len(initial_key_id) != INITIAL_KEY_ID_BYTES:
            raise KeyBlockError("an initial key ID (8 bytes) goes with a B1 key only")
        header.blocks[INITIAL_KEY_ID_BLOCK] = initial_key_id.hex().upper()
    try:
        return tr31.wrap(kbpk, header, key)
    except ValueError as error:
        raise KeyBlockError(f"cannot wrap the key: {error}") from None


def unwrap(kbpk: bytes, key_block: str) -> UnwrappedKey:
    """The key of an authentic version D block whose header makes sense for an AES-128 key we
    hold; KeyBlockError otherwise (psec's messages name header fields and ciphertext only)."""
    if not isinstance(key_block, str):
        raise KeyBlockError("a TR-31 key block is a string")
    try:
        header, key = tr31.unwrap(kbpk, key_block)
    except ValueError as error:      # tr31.KeyBlockError, tr31.HeaderError, bad encodings
        raise KeyBlockError(f"TR-31 block rejected: {error}") from None
    if header.version_id != VERSION_AES or header.algorithm != ALGORITHM_AES:
        raise KeyBlockError("only TR-31 version D blocks of AES keys are accepted")
    if len(key) != AES_KEY_BYTES:
        raise KeyBlockError("only AES-128 keys are accepted")
    try:
        usage = KeyUsage(header.key_usage)
    except ValueError:
        raise KeyBlockError(f"key usage {header.key_usage} is not one this HSM holds") from None
    if usage in NEVER_IMPORTED:
        raise KeyBlockError(f"keys of usage {usage.value} are generated in the HSM, never imported")
    _check_mode(usage, header.mode_of_use)
    return UnwrappedKey(usage, header.mode_of_use, key, _initial_key_id(usage, header))


def _check_mode(usage: KeyUsage, mode_of_use: str) -> None:
    if mode_of_use not in ALLOWED_MODES[usage]:
        raise KeyBlockError(f"mode of use {mode_of_use!r} does not fit key usage {usage.value}")


def _initial_key_id(usage: KeyUsage, header: tr31.Header) -> bytes | None:
    text = header.blocks.get(INITIAL_KEY_ID_BLOCK)
    if text is None:
        return None
    if usage is not KeyUsage.DUKPT_INITIAL_KEY:
        raise KeyBlockError("optional block IK belongs to B1 keys only")
    try:
        initial_key_id = bytes.fromhex(text)
    except ValueError:
        initial_key_id = b""
    if len(initial_key_id) != INITIAL_KEY_ID_BYTES or len(text) != 2 * INITIAL_KEY_ID_BYTES:
        raise KeyBlockError("optional block IK must hold 16 hex digits")
    return initial_key_id
