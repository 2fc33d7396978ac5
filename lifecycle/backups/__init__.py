"""Backup and recovery under split knowledge, and distribution of wrapped keys (SPEC §7)."""
