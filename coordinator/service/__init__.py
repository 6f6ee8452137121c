"""Use cases: each handler (and the hub) calls one function here."""
