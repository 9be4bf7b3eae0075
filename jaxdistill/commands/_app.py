"""Running a subcommand: absl's app with the run errors turned into one-paragraph messages."""

from __future__ import annotations

import sys

from absl import app, logging

from jaxdistill.train.program import RunError


def run(main) -> None:
    """`app.run` of `main(argv)`; a `RunError` (or a refused overwrite, `FileExistsError`) prints
    `error: <message>` and exits with status 2."""

    def wrapped(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}; this command takes flags only (see --help).")
        logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO
        try:
            main()
        except (RunError, FileExistsError) as e:  # FileExistsError: a command that never overwrites its output
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped)
