"""Key custody (software and PKCS#11 backends, AES-DUKPT, TR-31): arrives with terminal security."""
