"""Alembic migrations of the product database (revision files in ``versions/``).

They ship inside the package, so an installed wheel can upgrade its own database;
:mod:`provisioner.db.migrate` configures Alembic in code (no alembic.ini)."""
