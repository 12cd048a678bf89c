"""How every command runs: a user mistake is one ``error:`` line and exit code 2, never a traceback;
train.py's Hydra main gets the same (petseg/config_keys.py words the messages)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import CompactHydraException

from petseg.config_keys import check_added_keys, hydra_error_message
from petseg.errors import USAGE_ERROR, PetsegError
from petseg.hydra_args import quiet_other_ranks


def run_command(body: Callable[[], int]) -> int:
    """Run a command body: a PetsegError is one line on stderr and exit code 2, never a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return body()
    except PetsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# Characters Hydra's override grammar takes unquoted in a value (not ',' '=' '~' '$' spaces quotes brackets).


def run_hydra_main(main: Callable[[], Any], argv: list[str] | None = None) -> int:
    """Run a ``@hydra.main`` function on ``argv`` (default: the command line), with every user mistake
    one line and code 2.

    Hydra prints its own errors (an unknown group option or key, bad override syntax) over several
    lines with exit code 1, the code of internal failures too; with HYDRA_FULL_ERROR set it raises
    them instead, and its composition errors (CompactHydraException) are told apart here. Internal
    errors keep their traceback and exit code 1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    try:
        # Late: resume reads checkpoints (torch), which a mistyped command line should not wait for.
        from petseg.resume import continue_in_resumed_run

        argv = quiet_other_ranks(continue_in_resumed_run(argv))
        check_added_keys(argv)
        sys.argv = [saved_argv[0] if saved_argv else "train.py", *argv]
        os.environ["HYDRA_FULL_ERROR"] = "1"
        main()
        return 0
    except SystemExit as done:  # main's sys.exit(code), Hydra's --help
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except PetsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except CompactHydraException as err:
        print(f"error: {hydra_error_message(err, argv)}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt as err:  # Ctrl-C before training started, or a second signal during it
        print(f"error: interrupted{f' ({err})' if str(err) else ''}", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    finally:
        sys.argv = saved_argv
        if saved_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error
