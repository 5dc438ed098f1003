"""The native relay (docs/performance.md, "The native relay"), the one C extension.

Everything else is in pyproject.toml; setuptools still takes extensions from
here (its pyproject table for them is experimental).  ``optional``: a
machine without a C compiler installs consoled all the same, and the daemon
relays in Python (``consoled serve --relay python``, and says so at start).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "consoled.io._relay",
            sources=["consoled/io/_relay.c"],
            optional=True,
            extra_compile_args=[
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
            ],
        )
    ]
)
