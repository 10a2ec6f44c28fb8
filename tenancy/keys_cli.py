"""`python main.py keys ...`: make, list and revoke API keys in the job store (kept hashed).

    python main.py keys create --tenant NAME [--max-priority high|normal|low] [--max-waiting N] [--weight W]
                               [--rate PER_MIN] [--admin]     # the key is the last line printed
    python main.py keys list
    python main.py keys revoke KEY_OR_ID
"""
from __future__ import annotations

import argparse
import json
import time

from config import Config
from jobs.model import Priority
from store import JobStore, open_store
from tenancy.keys import ApiKey, key_hash, key_id_of, new_key


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="make, list and revoke API keys")
    actions = keys.add_subparsers(dest="keys_action", required=True)
    create = actions.add_parser("create", help="make a key; it is printed once, on the last line")
    create.add_argument("--tenant", required=True, help="whose jobs the key's requests are")
    create.add_argument("--max-priority", choices=[p.value for p in Priority], default=Priority.HIGH.value,
                        help="highest priority the key may ask for (higher gets 403)")
    create.add_argument("--max-waiting", type=_positive_int, help="most jobs of the tenant waiting at once (429)")
    create.add_argument("--rate", type=_positive_float, help="most submissions a minute (429 with Retry-After)")
    create.add_argument("--weight", type=_positive_float, default=1.0,
                        help="the tenant's fair share against others at one priority (default 1; 2 = twice the service)")
    create.add_argument("--admin", action="store_true", help="sees every tenant's jobs, ledger and counts")
    actions.add_parser("list", help="every key (never the keys themselves), as JSON lines")
    revoke = actions.add_parser("revoke", help="stop a key from working (within KEY_CACHE_S)")
    revoke.add_argument("key", metavar="KEY_OR_ID")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def run(args: argparse.Namespace, config: Config, store: JobStore | None = None) -> int:
    owned = store is None
    store = store or open_store(config)
    try:
        if args.keys_action == "create":
            tenant = args.tenant.strip()
            if not tenant:
                print("--tenant must not be empty")
                return 2
            key_id, key = new_key()
            record = ApiKey(key_id, tenant, Priority(args.max_priority), args.max_waiting, args.rate, args.admin,
                            time.time(), weight=args.weight)
            store.put_key(record.record(key_hash(key)))
            print(f"key {key_id} for tenant '{tenant}'" + (" (admin)" if args.admin else "")
                  + "; it is shown only now:")
            print(key)
            return 0
        if args.keys_action == "list":
            for doc in store.list_keys():
                print(json.dumps(ApiKey.from_record(doc).public()))
            return 0
        key_id = key_id_of(args.key)
        if store.revoke_key(key_id, time.time()):
            print(f"revoked key {key_id}")
            return 0
        print(f"no key {key_id} that is not revoked already")
        return 1
    finally:
        if owned:
            store.close()
