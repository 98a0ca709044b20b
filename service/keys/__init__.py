"""Owners and their API keys."""
