"""The ``ppo-jax`` console script: joins a multi-process run before JAX starts, then runs the CLI.

Kept apart from :mod:`ppo_jax.cli`, whose imports (gymnax) start the XLA backend, after
which ``jax.distributed.initialize`` is refused.
"""

import os
import sys
import time
import traceback

ALONE_AFTER_S = 30.0
"""How long a local process that met a checked error waits for process 0 to stop it (the error
met by every process) before it leaves on its own (the error was its alone)."""


def main() -> None:
    from ppo_jax import local_processes
    from ppo_jax.distributed import initialize_from_env
    from ppo_jax.run.configure import configure

    argv = sys.argv[1:]
    configure(local_processes.flag_value(argv, "--env"))  # the XLA flag, before anything starts JAX's backend
    try:
        processes = local_processes.plan(argv)  # every core for several seeds on a CPU
        local = local_processes.launch(argv, processes) if processes > 1 else None
        initialize_from_env()  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
    except ValueError as err:
        print(f"ppo-jax: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    from ppo_jax.cli import main as cli_main

    # A process started by another one (a local process of a multi-process run): if it fails
    # unexpectedly, it leaves at once. A normal exit would first wait for the others at JAX's
    # shutdown barrier, which they never reach while they wait for this one (5 minutes, then an
    # abort).
    started_by_another = local is None and os.environ.get("JAX_PROCESS_ID", "0") != "0"
    try:
        cli_main(local.argv if local is not None else argv)
    except SystemExit as end:
        # 130/143: Ctrl-C or SIGTERM stopped every process at one chunk (they agree on it), and
        # they are leaving too; stopping them now would leave this one waiting for them at exit.
        # A SystemExit is a checked error (bad input) that every process meets alike: process 0
        # stops the others and leaves at once; another process waits to be stopped (below).
        failed = end.code not in (0, None, 130, 143)
        if local is not None and failed:
            local.stop()
            # The others are stopped, so JAX's shutdown barrier at exit would wait for them in
            # vain (seen under load: a heartbeat timeout, then an abort instead of exit 2).
            from ppo_jax.run.lock import release_all

            release_all()
            if not isinstance(end.code, int):
                print(end.code, file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(end.code if isinstance(end.code, int) else 1)
        if started_by_another and failed:
            # A checked error this process alone met (a file only it could not read) would leave
            # it at JAX's shutdown barrier while the others wait for it in the run. Process 0,
            # meeting the error too, stops this one and reports the error with its own exit
            # code; if it has not after a while, it did not, so leave: it reports this failure.
            sys.stderr.flush()
            time.sleep(ALONE_AFTER_S)
            os._exit(end.code if isinstance(end.code, int) else 1)
        raise
    except BaseException:
        if local is not None:
            local.stop()
        if started_by_another:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        raise
