"""Stock site configs (installed as autoexp.site_configs)."""
