"""The dashboard: pages, sign-in and static files served by the API process (docs/ui.md)."""
