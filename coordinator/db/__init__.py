"""Persistence: SQLAlchemy Core tables, versioned migrations, engines, group-commit writer."""
