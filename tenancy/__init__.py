"""Tenants and their API keys: keys, callers and the quota rules (keys.py, pure), and the
`keys` command that makes, lists and revokes them (keys_cli.py)."""
