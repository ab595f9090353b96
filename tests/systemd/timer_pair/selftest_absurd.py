"""Test double for the timers to come: one database round trip, then exit."""

from __future__ import annotations

import logging
import sys

from absurd import config, database, journal
from absurd.errors import AbsurdError

EXIT_OK = 0
EXIT_DATABASE_UNAVAILABLE = 3

log = logging.getLogger("selftest_absurd")


def main() -> int:
    options = config.parser(__doc__).parse_args()
    journal.setup(options.log_level)

    try:
        dsn = database.resolve_dsn(options.dsn, options.state_dir)
        with database.connect(dsn, application_name="absurd-selftest") as conn:
            server_time = conn.execute("SELECT now()").fetchone()[0]
    except AbsurdError as exc:
        log.error("selftest failed: %s", exc)
        return EXIT_DATABASE_UNAVAILABLE

    log.info("selftest tick: database answered now=%s", server_time.isoformat())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
