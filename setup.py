"""Build of the optional C extension; everything else is in pyproject.toml.

``schemas._avro_writer`` encodes events along compiled plans (schemas/avro_plan.py). It is
optional: without a C compiler the install still succeeds and ``schemas.serde`` falls back
to cavro, byte for byte the same output, about four times slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("schemas._avro_writer", ["schemas/_avro_writer.c"],
                             extra_compile_args=["-O2"], optional=True)])
