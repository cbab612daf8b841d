"""A private SoftHSM2 token in a directory of its own, for the tests and the benchmark.

SoftHSM2 reads SOFTHSM2_CONF once, when the PKCS#11 module is initialised, and a process
initialises it once: set the returned SOFTHSM2_CONF in os.environ before the first Pkcs11Hsm.
The PINs are passed on softhsm2-util's command line, visible to local users: throwaway tokens
only, never a production one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from hsm.interface import HsmError
from hsm.pkcs11_backend import MODULE_VARIABLE, PIN_VARIABLE, TOKEN_LABEL_VARIABLE

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SOFTHSM_UTIL = "softhsm2-util"
CONFIG_VARIABLE = "SOFTHSM2_CONF"
INSTALL_HINT = "SoftHSM2 is not installed: apt-get install -y softhsm2"
PIN_HEX_BYTES = 8


def create_token(directory: Path, label: str) -> dict[str, str]:
    """Initialise a token labelled `label` under `directory`; return SOFTHSM2_CONF and the
    HDFPAY_PKCS11_* variables (random PIN) that open it."""
    if shutil.which(SOFTHSM_UTIL) is None or not Path(SOFTHSM_MODULE).is_file():
        raise HsmError(INSTALL_HINT)
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700, parents=True)      # must exist before --init-token
    config = directory / "softhsm2.conf"
    config.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                      "log.level = ERROR\n")
    pin, so_pin = secrets.token_hex(PIN_HEX_BYTES), secrets.token_hex(PIN_HEX_BYTES)
    result = subprocess.run(
        [SOFTHSM_UTIL, "--init-token", "--free", "--label", label, "--so-pin", so_pin,
         "--pin", pin],
        env={**os.environ, CONFIG_VARIABLE: str(config)}, capture_output=True, text=True)
    if result.returncode != 0:    # the command line holds the PINs: report the output only
        raise HsmError(f"softhsm2-util --init-token failed: {result.stderr.strip()}")
    return {CONFIG_VARIABLE: str(config), MODULE_VARIABLE: SOFTHSM_MODULE,
            TOKEN_LABEL_VARIABLE: label, PIN_VARIABLE: pin}
