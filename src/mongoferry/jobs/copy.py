"""`mongoferry copy`: one snapshot copy from a source to a destination."""

from __future__ import annotations

import logging

from mongoferry.core.errors import EXIT_INCONSISTENT, EXIT_OK, EXIT_UNEXPECTED
from mongoferry.infra.config import CopySettings
from mongoferry.infra.logs import resolve_format
from mongoferry.infra.progress import make_reporter, print_summary
from mongoferry.infra.runtime import stop_on_signals
from mongoferry.pipeline.copier import Copier
from mongoferry.pipeline.counts import capped_max, describe_count_difference
from mongoferry.state.endpoints import open_endpoints

log = logging.getLogger("mongoferry.copy")


def run_copy(settings: CopySettings) -> int:
    fmt = resolve_format(settings.log_format)
    ends = open_endpoints(settings, "copy")
    try:
        ends.refuse_same_deployment("copy")
        with stop_on_signals() as stop:
            reporter = make_reporter(fmt)
            copier = Copier(settings, ends.src, ends.dst, ends.meta, ends.nsmap, reporter, stop)
            try:
                copier.validate()
                log.info("copy starting" if not copier.resumed else "copy resuming",
                         extra={"namespaces": len(copier.mapping), "workers": settings.workers})
                copier.initialise()
                completed = copier.copy()
            finally:
                reporter.close()
            if not completed:
                log.warning("copy stopped before the end; run the same command again to resume")
                return EXIT_UNEXPECTED
            ends.meta.set_state("done")
            rows = copier.counts()
            print_summary(rows, fmt)
            differing = [r for r in rows if r["delta"]]
            if differing:
                capped = capped_max(ends.dst, [r["destination"] for r in differing])
                why = describe_count_difference(
                    differing, capped, "after the copy",
                    " — the source changed during the copy; use `mongoferry sync` for a live source")
                log.error("destination counts differ from the source", extra={"reason": why})
                print(why)
                return EXIT_INCONSISTENT
            log.info("copy complete", extra={"namespaces": len(rows),
                                             "documents": sum(r["destinationCount"] for r in rows)})
            return EXIT_OK
    finally:
        ends.close()
