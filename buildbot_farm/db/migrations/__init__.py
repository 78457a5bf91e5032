"""The farm database's numbered SQL migrations (data files, read by ``_migrations``)."""
