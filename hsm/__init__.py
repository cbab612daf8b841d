"""Key custody as a payment HSM offers it, behind one interface (interface.py).

Backends: software_backend (cryptography, keys sealed in keystore.py's file) and pkcs11_backend
(a PKCS#11 token, tested on SoftHSM2; objects laid out by pkcs11_objects); config opens the one
the environment names. Shared pieces: dukpt (AES-DUKPT derivation and the host's ladder cache),
key_blocks (TR-31 through psec), key_check (KCV), policy (rules both backends apply).
softhsm_token makes throwaway tokens for tests; bench_mac times MAC verification.
"""
