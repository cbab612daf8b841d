"""Open the HSM the deployment chose, from the environment (systemd EnvironmentFile, CI)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from hsm.interface import Hsm, HsmError

BACKEND_VARIABLE = "HDFPAY_HSM_BACKEND"
KEYSTORE_VARIABLE = "HDFPAY_KEYSTORE"
PASSPHRASE_VARIABLE = "HDFPAY_KEYSTORE_PASSPHRASE"
KEK_FILE_VARIABLE = "HDFPAY_KEYSTORE_KEK_FILE"
SOFTWARE = "software"
PKCS11 = "pkcs11"
DEFAULT_BACKEND = SOFTWARE


def open_hsm_from_env(environ: Mapping[str, str] = os.environ, *, create: bool = False) -> Hsm:
    """HDFPAY_HSM_BACKEND=software (default): the keystore file HDFPAY_KEYSTORE unlocked by
    HDFPAY_KEYSTORE_PASSPHRASE or HDFPAY_KEYSTORE_KEK_FILE (`create` makes a new keystore).
    HDFPAY_HSM_BACKEND=pkcs11: HDFPAY_PKCS11_MODULE, _TOKEN_LABEL and _PIN (see pkcs11_backend)."""
    backend = environ.get(BACKEND_VARIABLE) or DEFAULT_BACKEND
    if backend == SOFTWARE:
        return _software(environ, create)
    if backend == PKCS11:
        if create:
            raise HsmError("a PKCS#11 token is initialised by its own tools, not created here")
        from hsm.pkcs11_backend import Pkcs11Hsm  # python-pkcs11 loads only when chosen
        return Pkcs11Hsm(environ)
    raise HsmError(f"{BACKEND_VARIABLE}={backend!r}: expected {SOFTWARE!r} or {PKCS11!r}")


def _software(environ: Mapping[str, str], create: bool) -> Hsm:
    from hsm.software_backend import SoftwareHsm

    path = environ.get(KEYSTORE_VARIABLE)
    if not path:
        raise HsmError(f"{KEYSTORE_VARIABLE} is not set (path of the software HSM's keystore)")
    passphrase = environ.get(PASSPHRASE_VARIABLE) or None
    kek_file = environ.get(KEK_FILE_VARIABLE) or None
    if (passphrase is None) == (kek_file is None):
        raise HsmError(f"set exactly one of {PASSPHRASE_VARIABLE} and {KEK_FILE_VARIABLE}"
                       f" to unlock {KEYSTORE_VARIABLE}")
    return SoftwareHsm(path, passphrase=passphrase, kek_file=kek_file, create=create)
