"""Run ``phasespace run`` in this process and SIGKILL it at a chosen point (for tests/test_resume.py).

Usage: ``python tests/kill_driver.py KILL SPEC OUT`` where KILL is one of

* ``none``: run to completion;
* ``chunk:<step>``: right after the chunk that ends at <step> (after its checkpoint, if one is
  due, has been handed to orbax); ``chunk:<step>:wait=<s>`` first waits until a committed
  checkpoint of step <s> exists; ``chunk:<step>:nth=<k>`` kills at the k-th chunk ending at <step>
  (i.e. in the k-th bucket trained by this process);
* ``commit:<n>``: inside orbax's n-th checkpoint commit, after the arrays are written and before
  the temporary folder is renamed into place (a kill during a checkpoint write);
* ``analysis``: when the analysis of the first bucket that reaches it starts;
* ``write:<name>``: while writing the output file <name>, after the temporary file is complete and
  before it is renamed.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import signal
import sys
import time


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(kill: str) -> None:
    from phasespace import store, sweep

    kind, _, arg = kill.partition(":")
    if kind == "chunk":
        step, _, opt = arg.partition(":")
        wait_step = int(opt.split("=")[1]) if opt.startswith("wait=") else None
        nth = int(opt.split("=")[1]) if opt.startswith("nth=") else 1
        seen = [0]
        original = sweep.train_population

        @functools.wraps(original)
        def train_population(pop, recipe, chunk_steps=500, state=None, on_chunk=None, **kwargs):
            def hook(st, h):
                if on_chunk is not None:
                    on_chunk(st, h)
                if int(st.step[0]) == int(step):
                    seen[0] += 1
                    if seen[0] < nth:
                        return
                    if wait_step is not None:
                        t0 = time.time()
                        while not glob.glob(os.path.join(sys.argv[3], "checkpoints", "*", str(wait_step))):
                            if time.time() - t0 > 60:
                                raise RuntimeError("checkpoint never committed")
                            time.sleep(0.05)
                    die()

            return original(pop, recipe, chunk_steps, state=state, on_chunk=hook, **kwargs)

        sweep.train_population = train_population
    elif kind == "commit":
        from orbax.checkpoint._src.path import atomicity

        n = int(arg)
        calls = [0]
        original = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize(self, *a, **k):
            calls[0] += 1
            if calls[0] == n:
                die()
            return await original(self, *a, **k)

        atomicity.AtomicRenameTemporaryPath.finalize = finalize
    elif kind == "analysis":

        def analyze_full(*a, **k):
            die()

        sweep.analyze_full = analyze_full
    elif kind == "write":
        original = store.atomic_path

        @contextlib.contextmanager
        def atomic_path(path):
            with original(path) as tmp:
                yield tmp
                if os.path.basename(path) == arg:
                    die()

        store.atomic_path = atomic_path
    elif kind != "none":
        raise SystemExit(f"unknown kill point {kill!r}")


if __name__ == "__main__":
    kill, spec, out = sys.argv[1:4]
    install(kill)
    from phasespace.cli import main

    sys.exit(main(["run", spec, "--out", out, "--quiet"]))
