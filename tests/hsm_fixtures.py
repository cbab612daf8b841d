"""Fixtures of the HSM suite: the same tests run against the software HSM (a fresh keystore per
test) and the PKCS#11 HSM on a private SoftHSM2 token (one per test session: login is per
process; each test's keys are destroyed after it). Known keys enter through TR-31 blocks made
with psec directly, the way a key ceremony would bring them, since generated keys never leave.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms
from psec import tr31

from hsm import dukpt, softhsm_token
from hsm.interface import DUKPT_MAC_BYTES, INITIAL_KEY_ID_BYTES, Hsm, HsmError, KeyInfo, KeyUsage
from hsm.key_blocks import FULL_MODE
from hsm.software_backend import SoftwareHsm

# ANSI X9.24-3-2017 AES-128 test BDK and initial key ID (the standard's test-vector supplement).
KNOWN_BDK = bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1")
KNOWN_INITIAL_KEY_ID = bytes.fromhex("1234567890123456")
KNOWN_INITIAL_KEY = bytes.fromhex("1273671EA26AC29AFA4D1084127652A1")
KNOWN_MAC_KEY = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
TOKEN_LABEL = "hdfpay-test"
BACKENDS = ["software", "pkcs11"]
KEK_BYTES = 32


@pytest.fixture(scope="session")
def softhsm_environment(tmp_path_factory) -> dict[str, str]:
    try:
        environment = softhsm_token.create_token(tmp_path_factory.mktemp("softhsm"), TOKEN_LABEL)
    except HsmError as error:
        pytest.fail(f"{error} — the PKCS#11 backend is tested on SoftHSM2, never skipped")
    # SoftHSM2 reads its configuration when pkcs11.lib() first loads the module.
    os.environ[softhsm_token.CONFIG_VARIABLE] = environment[softhsm_token.CONFIG_VARIABLE]
    return environment


@pytest.fixture(scope="session")
def pkcs11_hsm(softhsm_environment):
    from hsm.pkcs11_backend import Pkcs11Hsm

    hsm = Pkcs11Hsm(softhsm_environment)
    yield hsm
    hsm.close()


@pytest.fixture
def kek_file(tmp_path: Path) -> Path:
    path = tmp_path / "keystore.kek"
    path.touch(mode=0o600)
    path.write_bytes(secrets.token_bytes(KEK_BYTES))
    return path


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path: Path, kek_file: Path):
    if request.param == "software":
        software = SoftwareHsm(tmp_path / "keystore.json", kek_file=kek_file, create=True)
        yield software
        software.close()
        return
    token_hsm = request.getfixturevalue("pkcs11_hsm")
    yield token_hsm
    for info in token_hsm.list_keys():
        token_hsm.destroy_key(info.alias)


def wrap_known(kbpk: bytes, usage: str, value: bytes, mode_of_use: str,
               algorithm: str = "A") -> str:
    return tr31.wrap(kbpk, tr31.Header("D", usage, algorithm, mode_of_use, "00", "N"), value)


def import_known(hsm: Hsm, alias: str, usage: KeyUsage, value: bytes,
                 mode_of_use: str | None = None) -> KeyInfo:
    """Import a known key under a fresh transport key named alias + '.kbpk'."""
    _, kbpk = hsm.create_transport_key(f"{alias}.kbpk")
    block = wrap_known(kbpk, usage.value, value, mode_of_use or FULL_MODE[usage])
    return hsm.import_key_block(alias, block, f"{alias}.kbpk")


def aes_cmac(key: bytes, data: bytes) -> bytes:
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def terminal_mac(ksn: bytes, data: bytes, usage: dukpt.KeyUsage, bdk: bytes = KNOWN_BDK) -> bytes:
    """What a terminal computes: its working key from its initial key, then AES-CMAC, 8 bytes."""
    initial_key = dukpt.derive_initial_key(bdk, ksn[:INITIAL_KEY_ID_BYTES])
    return aes_cmac(dukpt.derive_working_key(initial_key, ksn, usage), data)[:DUKPT_MAC_BYTES]
