"""The one compiled module (protocol/_ed25519_batch.c); everything else is in pyproject.toml.

Optional: where it cannot be compiled (no C compiler), the install goes on without it and
signatures are verified on the event loop (protocol/ed25519_batch.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "protocol._ed25519_batch",
            sources=["protocol/_ed25519_batch.c"],
            optional=True,
        )
    ]
)
