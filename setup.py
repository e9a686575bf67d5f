"""Build of the optional C extensions; everything else is in pyproject.toml.

``schemas._avro_writer`` encodes events along compiled plans (schemas/avro_plan.py);
``tickflow._ids`` builds a DBN chunk's event ids as one Arrow column. Both are optional:
without a C compiler the install still succeeds, ``schemas.serde`` falls back to cavro and
``tickflow.normalize.databento`` to Arrow compute, byte for byte the same output, slower.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(name, [src], extra_compile_args=["-O2"], optional=True)
                   for name, src in (("schemas._avro_writer", "schemas/_avro_writer.c"),
                                     ("tickflow._ids", "tickflow/_ids.c"))])
