"""export worker and ``fleet export``: signed bundles of the fleet's state.

- :mod:`workers.export.bundles`: rows to deterministic files (pure).
- :mod:`workers.export.queries`: each profile's rows, read in one snapshot.
- :mod:`workers.export.service`: build, sign (:mod:`workers.signing`), write, verify.
- :mod:`workers.export.worker`: the consumer of ``export:requests``.
- :mod:`workers.export.cli`: ``fleet export bundle|verify|keygen``, ``fleet vex export|verify``.

See ``docs/exports.md``.
"""

from workers.export.worker import ExportWorker

__all__ = ["ExportWorker"]
