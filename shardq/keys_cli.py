"""`shardq keys`: create, list, rotate, revoke, disable, enable and import API keys.

Each command edits the keys file under its lock (keys.py rule 3); a running server picks the
change up within a second (or at once on SIGHUP). A new secret is printed once, as the LAST line
of stdout, and is never written anywhere. Every change is logged to stderr as one
``shardq keys: ...`` line naming the key's id and name and the OS user who made it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from dataclasses import replace
from typing import Any

from shardq import keys as K
from shardq.cli_commands import print_json, print_table
from shardq.config import load_config
from shardq.errors import ConfigError
from shardq.patterns import PatternError

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class KeysCliError(Exception):
    """A bad argument or file: one line on stderr, exit 2."""


def parse_duration_ms(text: str) -> int:
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) <= 0:
        raise KeysCliError(f"{text!r} is not a duration (allowed: a positive number and one of "
                           "s, m, h, d, w: 30d, 12h)")
    return int(m.group(1)) * _UNITS[m.group(2)] * 1000


def parse_expires(text: str | None, now: int) -> int | None:
    """``--expires``: a duration from now (30d), an ISO date or time, or ``never``."""
    if text is None or text == "never":
        return None
    if _DURATION.match(text.strip()):
        return now + parse_duration_ms(text)
    try:
        when = K.parse_time(text)
    except ValueError:
        raise KeysCliError(f"--expires {text!r}: not a duration (30d, 12h), an ISO 8601 date or "
                           "time, or 'never'") from None
    if when <= now:
        raise KeysCliError(f"--expires {text!r} is in the past")
    return when


def _keys_file(args: argparse.Namespace) -> str:
    if args.keys_file:
        return str(args.keys_file)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise KeysCliError(f"config error: {exc}") from None
    if not cfg.auth.keys_file:
        raise KeysCliError("no keys file: give --keys-file, or --config with auth.keys_file set")
    return cfg.auth.keys_file


def _load(path: str, missing_ok: bool = False) -> list[K.KeyRecord]:
    if missing_ok and not os.path.exists(path):
        return []
    try:
        return K.read_keys(path)
    except K.KeysFileError as exc:
        raise KeysCliError(str(exc)) from None


def _audit(action: str, rec: K.KeyRecord, extra: str = "") -> None:
    try:
        user = getpass.getuser()
    except Exception:  # no user name for this uid
        user = str(os.getuid())
    print(f"shardq keys: {action} key {rec.id} ({rec.name!r}) by user {user}{extra}", file=sys.stderr)


def _find(records: list[K.KeyRecord], key_id: str) -> int:
    for i, r in enumerate(records):
        if r.id == key_id:
            return i
    raise KeysCliError(f"no key with id {key_id!r} in the keys file (`shardq keys list` shows them)")


def _show_new(args: argparse.Namespace, rec: K.KeyRecord, secret: str, now: int) -> None:
    """The new key, then its secret as the last line of stdout (the only time it is shown)."""
    if args.json:
        print_json({**K.describe(rec, now), "secret": secret})
        return
    d = K.describe(rec, now)
    print(f"id:          {rec.id}\nname:        {rec.name}\npermissions: {_perms(d['permissions'])}\n"
          f"expires:     {d['expires'] or 'never'}")
    print("The secret below is shown this once; only its SHA-256 is stored. Give it to the client "
          "as --api-key or SHARDQ_API_KEY.")
    print(secret)


def _perms(perms: dict[str, list[str]]) -> str:
    return " ".join(f"{p}={','.join(pats)}" for p, pats in perms.items())


# -- commands ------------------------------------------------------------------------------------

def cmd_create(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    now = K.now_ms()
    perms = [p.strip() for p in args.permissions.split(",") if p.strip()]
    try:
        scopes = K.make_scopes(perms, args.types)
    except (ValueError, PatternError) as exc:
        raise KeysCliError(f"--permissions/--types: {exc}") from None
    expires = parse_expires(args.expires, now)
    if not args.name.strip():
        raise KeysCliError("--name must not be empty")
    with K.locked(path):
        records = _load(path, missing_ok=True)
        kid, secret = K.new_secret()
        while any(r.id == kid for r in records):
            kid, secret = K.new_secret()
        rec = K.KeyRecord(kid, args.name, K.hash_secret(secret), scopes, expires, False, now)
        K.write_keys(path, [*records, rec])
    _audit("created", rec, f" with {_perms(K.describe(rec, now)['permissions'])}")
    _show_new(args, rec, secret, now)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    now = K.now_ms()
    rows = [K.describe(r, now) for r in _load(_keys_file(args))]
    if args.json:
        print_json(rows)
        return 0
    print_table(["id", "name", "state", "expires", "permissions"],
                [[d["id"], d["name"], d["state"] + (f" (old secret until {d['grace_until']})"
                                                    if d["grace_until"] else ""),
                  d["expires"] or "never", _perms(d["permissions"])] for d in rows], empty="(no keys)")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    now = K.now_ms()
    grace = parse_duration_ms(args.grace) if args.grace else 0
    with K.locked(path):
        records = _load(path)
        i = _find(records, args.id)
        old = records[i]
        _, secret = K.new_secret(old.id)
        kept = tuple(g for g in old.grace if g[1] > now)
        if grace:
            kept += ((old.hash, now + grace),)
        records[i] = replace(old, hash=K.hash_secret(secret), grace=kept)
        K.write_keys(path, records)
    _audit("rotated", old, f"; the old secret works until {K.iso(now + grace)}" if grace else
           "; the old secret stops working now")
    _show_new(args, records[i], secret, now)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    with K.locked(path):
        records = _load(path)
        rec = records.pop(_find(records, args.id))
        K.write_keys(path, records)
    _audit("revoked", rec, "; its connections are closed")
    if args.json:
        print_json({"id": rec.id, "revoked": True})
    else:
        print(f"revoked {rec.id} ({rec.name})")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    disable = args.keys_action == "disable"
    with K.locked(path):
        records = _load(path)
        i = _find(records, args.id)
        records[i] = replace(records[i], disabled=disable)
        K.write_keys(path, records)
    _audit("disabled" if disable else "enabled", records[i])
    if args.json:
        print_json(K.describe(records[i], K.now_ms()))
    else:
        print(f"{'disabled' if disable else 'enabled'} {records[i].id} ({records[i].name})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """The plaintext ``auth.api_keys`` of a config file into the keys file: the same secrets go
    on working (only their hashes are written), each permission on every task type."""
    if not args.keys_file:
        raise KeysCliError("give --keys-file: where to write the imported keys")
    try:
        cfg = load_config(args.config, env={})
    except ConfigError as exc:
        raise KeysCliError(f"config error: {exc}") from None
    if not cfg.auth.api_keys:
        raise KeysCliError(f"{args.config}: auth.api_keys is empty: nothing to import")
    now = K.now_ms()
    path = args.keys_file
    with K.locked(path):
        records = _load(path, missing_ok=True)
        known = {r.hash for r in records}
        added = []
        for legacy in K.legacy_records(cfg.auth.api_keys):
            if legacy.hash in known:
                continue
            kid, _ = K.new_secret()
            added.append(replace(legacy, id=kid, created_ms=now, legacy=False))
        K.write_keys(path, records + added)
    for rec in added:
        _audit("imported", rec)
    if args.json:
        print_json([K.describe(r, now) for r in added])
    else:
        print(f"imported {len(added)} keys into {path} ({len(cfg.auth.api_keys) - len(added)} were there "
              "already). Now set auth.keys_file to it and delete auth.api_keys from the config.")
    return 0


# -- parser --------------------------------------------------------------------------------------

def add_keys_command(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage API keys: create, list, rotate, revoke (docs/security.md)")
    ksub = keys.add_subparsers(dest="keys_action", required=True,
                               metavar="{create,list,rotate,revoke,disable,enable,import}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--keys-file", metavar="FILE", help="the keys file (default: auth.keys_file of --config)")
    common.add_argument("--config", metavar="FILE", help="config.yaml whose auth.keys_file to use")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = ksub.add_parser("create", parents=[common], help="make a key; its secret is the last line printed")
    p.add_argument("--name", required=True, help="who uses the key (shown in logs)")
    p.add_argument("--permissions", required=True, metavar="LIST",
                   help="comma-separated: submit, claim, read, admin")
    p.add_argument("--types", nargs="+", metavar="PATTERN",
                   help="task-type patterns the permissions cover ('*' one segment, '>' the rest; "
                        "default '>': every type)")
    p.add_argument("--expires", metavar="WHEN", help="30d, 12h, an ISO date or time, or never (default)")
    p.set_defaults(keys_handler=cmd_create)

    p = ksub.add_parser("list", parents=[common], help="the keys: id, name, state, permissions (no secrets)")
    p.set_defaults(keys_handler=cmd_list)

    p = ksub.add_parser("rotate", parents=[common], help="a new secret for a key; the old one stops working")
    p.add_argument("id")
    p.add_argument("--grace", metavar="DURATION",
                   help="keep the old secret working this long too (e.g. 1h); default: none")
    p.set_defaults(keys_handler=cmd_rotate)

    for action, what in (("revoke", "delete a key: refused from now on, its connections closed"),
                         ("disable", "refuse a key until it is enabled again; its connections closed"),
                         ("enable", "accept a disabled key again")):
        p = ksub.add_parser(action, parents=[common], help=what)
        p.add_argument("id")
        p.set_defaults(keys_handler=cmd_revoke if action == "revoke" else cmd_disable)

    p = ksub.add_parser("import", parents=[common],
                        help="move the plaintext auth.api_keys of --config into --keys-file (hashed)")
    p.set_defaults(keys_handler=cmd_import)


def run(args: argparse.Namespace) -> int:
    if args.keys_action == "import" and not args.config:
        print("shardq keys import: give --config: the config file whose auth.api_keys to import",
              file=sys.stderr)
        return 2
    try:
        return int(args.keys_handler(args))
    except KeysCliError as exc:
        print(f"shardq keys {args.keys_action}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"shardq keys {args.keys_action}: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1


__all__ = ["add_keys_command", "parse_expires", "run"]
