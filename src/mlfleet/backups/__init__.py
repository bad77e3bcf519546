"""Backups of tracking servers and restores from them."""
