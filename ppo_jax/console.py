"""The ``ppo-jax`` console script: joins a multi-process run before JAX starts, then runs the CLI.

Kept apart from :mod:`ppo_jax.cli`, whose imports (gymnax) start the XLA backend, after
which ``jax.distributed.initialize`` is refused.
"""

import sys


def main() -> None:
    from ppo_jax import local_processes
    from ppo_jax.distributed import initialize_from_env
    from ppo_jax.run.configure import configure

    configure()  # the XLA flag, before anything starts JAX's backend
    argv = sys.argv[1:]
    try:
        processes = local_processes.plan(argv)  # every core for several seeds on a CPU
        local = local_processes.launch(argv, processes) if processes > 1 else None
        initialize_from_env()  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
    except ValueError as err:
        print(f"ppo-jax: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    from ppo_jax.cli import main as cli_main

    try:
        cli_main(local.argv if local is not None else argv)
    except SystemExit as end:
        # 130/143: Ctrl-C or SIGTERM stopped every process at one chunk (they agree on it), and
        # they are leaving too; stopping them now would leave this one waiting for them at exit.
        if local is not None and end.code not in (0, None, 130, 143):
            local.stop()
        raise
    except BaseException:
        if local is not None:
            local.stop()
        raise
