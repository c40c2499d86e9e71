"""Prefect 3 flows: thin wrappers over ``corpus`` (which never imports Prefect)."""
