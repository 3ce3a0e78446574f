"""The dev kit: everything that runs the product on one machine without being the product.

- :mod:`devkit.embedded`: real Valkey, PostgreSQL 16 and S3 servers, pip-installed
  (the ``embedded`` extra).
- :mod:`devkit.workload`: realistic, seeded synthetic events for the demo, the tests and
  the benchmarks.
- :mod:`devkit.demo`: ``fleet demo``.

The dev kit sits above every other layer (see ``docs/architecture.md``): it may import
the workers, nothing in ``workers`` or ``contracts`` imports it.
"""
