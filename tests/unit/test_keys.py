"""The pure parts of API keys: patterns, the keys file, checking a secret, the throttle, the
insecure-channel rule."""

from __future__ import annotations

import pytest

from shardq import keys as K
from shardq.patterns import PatternError, TypePatterns
from shardq.server.auth import DELAY_MAX_S, FREE_FAILURES, Throttle
from shardq.server.operations import _claim_types, _is_loopback


@pytest.mark.parametrize("pattern,yes,no", [
    (">", ["a", "a.b", "a.b.c"], []),
    ("email.>", ["email.send", "email.a.b"], ["email", "sms.send", "emailx.send"]),
    ("email.*", ["email.send"], ["email", "email.a.b"]),
    ("*.send", ["email.send", "sms.send"], ["send", "a.b.send"]),
    ("a.*.c", ["a.b.c"], ["a.c", "a.b.d"]),
    ("report", ["report"], ["report.x", "reports"]),
])
def test_patterns(pattern: str, yes: list[str], no: list[str]) -> None:
    p = TypePatterns([pattern])
    assert all(p.matches(t) for t in yes) and not any(p.matches(t) for t in no)
    assert p.isdisjoint(no) and (not yes or not p.isdisjoint(yes))


@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a.>.b", "email*", "a b", ">x", 5])
def test_bad_patterns_are_refused(bad: object) -> None:
    with pytest.raises(PatternError):
        TypePatterns([bad])  # type: ignore[list-item]


def test_verify_and_still_valid() -> None:
    kid, secret = K.new_secret()
    rec = K.KeyRecord(kid, "n", K.hash_secret(secret), K.make_scopes(["read"], None))
    ring = K.KeyRing([rec])
    assert ring.verify(secret, 0).record == rec
    assert ring.verify(secret + "x", 0).reason == "bad_secret"
    assert ring.verify("sq_0123456789ab_x", 0).reason == "unknown_key"
    assert ring.verify(None, 0).reason == "missing" and ring.verify(7, 0).reason == "missing"
    h = ring.verify(secret, 0).hash
    assert ring.still_valid(kid, h, 0) == ""
    assert K.KeyRing([]).still_valid(kid, h, 0) == "revoked"
    expiring = K.KeyRing([K.KeyRecord(kid, "n", rec.hash, rec.permissions, expires_ms=100)])
    assert expiring.verify(secret, 99).record is not None and expiring.verify(secret, 100).reason == "expired"
    _, new = K.new_secret(kid)
    rotated = K.KeyRing([K.KeyRecord(kid, "n", K.hash_secret(new), rec.permissions, grace=((rec.hash, 50),))])
    assert rotated.verify(secret, 49).record is not None and rotated.verify(secret, 50).reason == "bad_secret"
    assert rotated.still_valid(kid, h, 10) == "" and rotated.still_valid(kid, h, 60) == "rotated"


def test_file_round_trip_and_errors(tmp_path) -> None:
    kid, secret = K.new_secret()
    rec = K.KeyRecord(kid, "n", K.hash_secret(secret), K.make_scopes(["submit", "read"], ["a.>"]),
                      expires_ms=1_900_000_000_000, created_ms=1_700_000_000_000)
    path = str(tmp_path / "k.yaml")
    K.write_keys(path, [rec])
    assert K.read_keys(path) == [rec]
    assert secret not in open(path).read()
    text = open(path).read().replace("- a.>", "- 'a*'", 1)
    with pytest.raises(K.KeysFileError, match=rf"keys\[0\] \(id {kid}, line 6\): permissions.submit: 'a\*'"):
        K.parse_keys(text, "k.yaml")
    with pytest.raises(K.KeysFileError, match=r"keys\[0\] .*: key: unknown field"):
        K.parse_keys(open(path).read().replace("  name: n", f"  name: n\n  key: {secret}"))
    try:
        K.parse_keys(open(path).read().replace("  name: n", f"  name: n\n  key: {secret}"))
    except K.KeysFileError as exc:
        assert secret not in str(exc)


def test_claim_types_under_a_scope() -> None:
    scope = TypePatterns(["a.>"])
    assert _claim_types(None, None) is None
    assert _claim_types(scope, None) is scope
    assert _claim_types(scope, frozenset({"a.x"})) == frozenset({"a.x"})
    with pytest.raises(Exception, match="may not claim tasks of type 'b'"):
        _claim_types(scope, frozenset({"a.x", "b"}))


def test_throttle() -> None:
    t = Throttle()
    delays = [t.failed("1.2.3.4", 0.0) for _ in range(FREE_FAILURES + 10)]
    assert delays[:FREE_FAILURES] == [0.0] * FREE_FAILURES
    assert delays[FREE_FAILURES] > 0 and delays[-1] == DELAY_MAX_S
    assert t.failed("5.6.7.8", 0.0) == 0.0  # per address
    assert t.failed("1.2.3.4", 1000.0) == 0.0  # forgotten after a quiet while


@pytest.mark.parametrize("peer,loop", [("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
                                       ("unix", True), ("192.0.2.2", False), ("10.0.0.1", False)])
def test_loopback_rule(peer: str, loop: bool) -> None:
    assert _is_loopback(peer) is loop
