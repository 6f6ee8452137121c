from __future__ import annotations

import hashlib
import stat
from decimal import Decimal
from pathlib import Path

import pytest

from protocol import keys, money, timefmt


def test_address_and_miner_id_follow_the_spec() -> None:
    private_key = keys.generate_private_key()
    raw = keys.public_key_bytes(private_key)
    digest = hashlib.sha256(raw)
    assert keys.address_of(private_key) == "ait1" + digest.digest()[:20].hex()
    assert keys.miner_id_from_public_key(raw) == "miner_" + digest.hexdigest()[:12]
    assert keys.is_address(keys.address_of(private_key))
    assert not keys.is_address("ait1XYZ")
    assert not keys.is_address(keys.address_of(private_key) + "\n")  # not `$`'s newline


def test_signature_round_trip_and_tamper() -> None:
    private_key = keys.generate_private_key()
    sig = keys.sign_hex(private_key, b"hello")
    pub = keys.public_key_hex(private_key)
    assert keys.verify_hex(pub, sig, b"hello")
    assert not keys.verify_hex(pub, sig, b"hellp")
    assert not keys.verify_hex(pub, "", b"hello")
    assert not keys.verify_hex("zz", sig, b"hello")
    assert not keys.verify_hex(pub, sig.upper(), b"hello")


# RFC 8032, section 7.1, test 2 (a one-byte message).
RFC8032_SECRET = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"
RFC8032_PUBLIC = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
RFC8032_SIGNATURE = (
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


def test_signatures_match_rfc_8032_and_cryptography_both_ways() -> None:
    private_key = keys.private_key_from_hex(RFC8032_SECRET)
    assert keys.public_key_hex(private_key) == RFC8032_PUBLIC
    assert keys.sign_hex(private_key, b"\x72") == RFC8032_SIGNATURE
    assert keys.verify_hex(RFC8032_PUBLIC, RFC8032_SIGNATURE, b"\x72")
    # libsodium signs, cryptography (OpenSSL) verifies, and the other way round.
    other = keys.generate_private_key()
    message = b'{"job_id":"job_1","units":3}'
    other.public_key().verify(bytes.fromhex(keys.sign_hex(other, message)), message)
    assert keys.verify_hex(keys.public_key_hex(other), other.sign(message).hex(), message)


def test_each_key_signs_as_itself_however_many_a_process_holds() -> None:
    # Signing material is kept per key object (a bounded cache): more keys than it holds,
    # each used twice, still sign with their own secret and name their own public key.
    made = [keys.generate_private_key() for _ in range(80)]
    for _ in range(2):
        for key in made:
            public = key.public_key().public_bytes_raw().hex()
            assert keys.public_key_hex(key) == public
            sig = keys.sign_hex(key, public.encode())
            assert sig == key.sign(public.encode()).hex()
            assert keys.verify_hex(public, sig, public.encode())
    # Another object of the same seed is the same key.
    twin = keys.private_key_from_hex(keys.private_key_hex(made[0]))
    assert keys.sign_hex(twin, b"m") == keys.sign_hex(made[0], b"m")


def test_a_small_order_public_key_verifies_nothing() -> None:
    # The identity point with R = identity, S = 0 "signs" every message under plain
    # cofactorless checks (OpenSSL accepts it); anyone could speak for such a key.
    identity = "01" + "00" * 31
    forged = identity + "00" * 32
    assert not keys.verify_hex(identity, forged, b"pay miner_x 1000 AIT")
    assert not keys.verify_hex("00" * 32, "00" * 64, b"")


def test_key_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "miner.key"
    created = keys.load_or_create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = keys.load_or_create_key_file(path)
    assert keys.public_key_hex(loaded) == keys.public_key_hex(created)
    path.write_text("{not json")
    with pytest.raises(keys.KeyFileError):
        keys.load_key_file(path)


@pytest.mark.parametrize(
    ("value", "uait"),
    [
        (0.05, 50_000),
        ("1", 1_000_000),
        (Decimal("0.000001"), 1),
        (1000, 1_000_000_000),
        (0.1, 100_000),
    ],
)
def test_ait_to_uait_exact(value: object, uait: int) -> None:
    assert money.ait_to_uait(value) == uait  # type: ignore[arg-type]
    assert money.ait_to_uait(money.uait_to_ait(uait)) == uait


@pytest.mark.parametrize("bad", [0.0000001, "abc", float("inf"), True, 10**20])
def test_ait_to_uait_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        money.ait_to_uait(bad)  # type: ignore[arg-type]


def test_iso_ms_round_trip() -> None:
    assert timefmt.iso_ms(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert timefmt.parse_iso_ms("2023-11-14T22:13:20.123Z") == 1_700_000_000_123
    assert timefmt.iso_ms(None) is None
