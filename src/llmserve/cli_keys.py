"""``llmserve keys create | list | revoke``: the API keys in the key store (``--key-db``)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from llmserve.settings import Settings


def add_keys_parser(sub: argparse._SubParsersAction, add_settings_flags) -> None:
    keys = sub.add_parser("keys", help="Manage API keys in the key store (--key-db); a running server sees changes at once.")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    only_key_db = set(Settings.model_fields) - {"key_db"}

    create = actions.add_parser("create", help="Create a key and print it (shown only this once).")
    create.add_argument("--name", required=True, help="Who or what the key is for.")
    create.add_argument("--rpm", type=int, default=None, help="Requests per minute for this key (default: --rate-limit-rpm; 0: unlimited).")
    create.add_argument("--admin", action="store_true", help="The key may also manage the server at run time (POST /v1/load_lora_adapter, /v1/unload_lora_adapter).")
    create.add_argument("--tpm", type=int, default=None, help="Tokens per minute for this key (default: --rate-limit-tpm; 0: unlimited).")
    add_settings_flags(create, skip=only_key_db)

    listing = actions.add_parser("list", help="List keys (never the keys themselves).")
    listing.add_argument("--all", action="store_true", help="Include revoked keys.")
    listing.add_argument("--json", action="store_true", help="Print JSON.")
    add_settings_flags(listing, skip=only_key_db)

    revoke = actions.add_parser("revoke", help="Revoke a key by id, or every key with a name.")
    revoke.add_argument("key", metavar="ID_OR_NAME")
    add_settings_flags(revoke, skip=only_key_db)


def run_keys(args: argparse.Namespace, settings: Settings) -> int:
    from llmserve.server.keystore import KeyStore

    if not settings.key_db:
        print("llmserve: no key store: pass --key-db FILE or set LLMSERVE_KEY_DB", file=sys.stderr)
        return 2
    store = KeyStore(settings.key_db)
    if args.keys_command == "create":
        record, key = store.create(args.name, rpm=args.rpm, tpm=args.tpm, admin=args.admin)
        print(f"created {record.id} ({record.name}); the key is shown only now:", file=sys.stderr)
        print(key)
        return 0
    if args.keys_command == "revoke":
        revoked = store.revoke(args.key)
        if not revoked:
            print(f"llmserve: no active key with id or name {args.key!r}", file=sys.stderr)
            return 1
        for record in revoked:
            print(f"revoked {record.id} ({record.name})")
        return 0
    records = store.list(include_revoked=args.all)
    if args.json:
        print(json.dumps([{"id": r.id, "name": r.name, "key_hint": r.key_hint, "rpm": r.rpm, "tpm": r.tpm,
                           "created_at": r.created_at, "revoked_at": r.revoked_at, "admin": r.admin} for r in records], indent=2))
        return 0
    rows = [("ID", "NAME", "KEY", "RPM", "TPM", "CREATED", "STATUS")]
    for r in records:
        created = datetime.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M")
        rows.append((r.id, r.name, r.key_hint, _limit(r.rpm), _limit(r.tpm), created,
                     ("active" if r.active else "revoked") + (", admin" if r.admin else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _limit(value: int | None) -> str:
    return "default" if value is None else "unlimited" if value == 0 else str(value)
