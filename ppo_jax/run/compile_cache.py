"""JAX's persistent compilation cache for the command-line tools, on by default.

Compiling is a large share of a short run on XLA:CPU (the default CartPole run compiles
for about as long as it trains); with the cache, running the same command again loads the
programs from disk instead. Off with ``RL_JAX_COMPILATION_CACHE=0``; another folder with
``RL_JAX_COMPILATION_CACHE=/path``; JAX's own ``JAX_COMPILATION_CACHE_DIR``, when set, wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from ppo_jax.run.settings import env_setting

NAME = "COMPILATION_CACHE"
OFF = ("0", "off", "false", "no")


def default_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rl-jax" / "xla"


def enable() -> Path | None:
    """Points JAX's persistent compilation cache at the user's cache folder (before anything
    compiles); returns the folder, or None when it is off or JAX's own setting is in force."""
    setting = env_setting(NAME) or ""
    if setting.lower() in OFF or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    import jax

    folder = Path(setting) if setting else default_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Cache every program that took noticeable time, not only those over JAX's 1 s default:
    # a run compiles a dozen small ones besides the training loop.
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    # A size limit bounds the folder (least recently used entries go first) and makes JAX
    # lock it, so runs started together never read a half-written entry.
    jax.config.update("jax_compilation_cache_max_size", 2 << 30)
    return folder
