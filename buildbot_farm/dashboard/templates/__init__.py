"""The dashboard pages' Jinja2 templates (data files, loaded by ``_pages``)."""
