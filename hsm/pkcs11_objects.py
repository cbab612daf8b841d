"""How the keys sit in a PKCS#11 token: one secret-key object per alias, labelled with it, whose
CKA_ID holds a small JSON record (usage, mode of use, KCV, creation time) written once, and
whose capabilities are those of its usage and no more."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import pkcs11
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

from hsm.interface import KeyInfo, KeyUsage

RECORD_TAG = "hdfpay/1"

CAPABILITIES = {
    KeyUsage.BDK: MechanismFlag.DERIVE,
    KeyUsage.DUKPT_INITIAL_KEY: MechanismFlag.DERIVE,
    KeyUsage.KEY_BLOCK_PROTECTION: MechanismFlag(0),   # TR-31 happens on the host
    KeyUsage.MAC: MechanismFlag.SIGN,
    KeyUsage.HMAC: MechanismFlag.SIGN,          # CKM_SHA256_HMAC on a CKK_GENERIC_SECRET
}
_CAPABILITY_ATTRIBUTES = {
    Attribute.ENCRYPT: MechanismFlag.ENCRYPT, Attribute.DECRYPT: MechanismFlag.DECRYPT,
    Attribute.SIGN: MechanismFlag.SIGN, Attribute.VERIFY: MechanismFlag.VERIFY,
    Attribute.WRAP: MechanismFlag.WRAP, Attribute.UNWRAP: MechanismFlag.UNWRAP,
    Attribute.DERIVE: MechanismFlag.DERIVE,
}
PROTECTED = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}


@dataclass(frozen=True)
class TokenKey:
    info: KeyInfo
    mode_of_use: str
    handle: pkcs11.SecretKey = field(repr=False)


def record(info: KeyInfo, mode_of_use: str) -> bytes:
    return json.dumps({"tag": RECORD_TAG, "usage": info.usage.value, "mode_of_use": mode_of_use,
                       "kcv": info.kcv, "created_at": info.created_at.isoformat()}).encode()


def parse_record(handle: pkcs11.SecretKey) -> TokenKey | None:
    """The key as recorded in its CKA_ID; None for objects that are not ours."""
    try:
        fields = json.loads(handle[Attribute.ID])
        if fields.get("tag") != RECORD_TAG:
            return None
        info = KeyInfo(handle.label, KeyUsage(fields["usage"]), fields["kcv"],
                       dt.datetime.fromisoformat(fields["created_at"]))
        return TokenKey(info, fields["mode_of_use"], handle)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def import_template(info: KeyInfo, mode_of_use: str, value: bytes) -> dict:
    """A token object for a key that came through the host: sensitive, non-extractable, and
    neither modifiable nor copyable, so that no capability can be added later."""
    attributes = {
        Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE: value, Attribute.TOKEN: True, Attribute.PRIVATE: True,
        Attribute.LABEL: info.alias, Attribute.ID: record(info, mode_of_use),
        Attribute.MODIFIABLE: False, Attribute.COPYABLE: False, **PROTECTED,
    }
    attributes.update({attribute: bool(CAPABILITIES[info.usage] & flag)
                       for attribute, flag in _CAPABILITY_ATTRIBUTES.items()})
    return attributes
