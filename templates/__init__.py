"""Stock Jinja templates for the array, tasks and sidecar scripts (installed as autoexp.templates)."""
