"""Run ``phasespace run`` in this process and SIGKILL it at a chosen point (for tests/e2e/test_resume.py).

Usage: ``python tests/helpers/kill_driver.py KILL SPEC OUT [RUN OPTIONS...]`` (options of
``phasespace run``, e.g. ``--coordinator`` …) where KILL is one of

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
    from phasespace import hooks

    kind, _, arg = kill.partition(":")
    if kind == "chunk":
        step, _, opt = arg.partition(":")
        wait_step = int(opt.split("=")[1]) if opt.startswith("wait=") else None
        nth = int(opt.split("=")[1]) if opt.startswith("nth=") else 1
        seen = [0]

        def chunk_done(bucket: str, step_done: int) -> None:
            if step_done != int(step):
                return
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

        hooks.subscribe("chunk_done", lambda bucket, step: chunk_done(bucket, step))
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
        hooks.subscribe("analysis_start", lambda bucket: die())
    elif kind == "write":
        hooks.subscribe("file_ready", lambda path: die() if os.path.basename(path) == arg else None)
    elif kind != "none":
        raise SystemExit(f"unknown kill point {kill!r}")


if __name__ == "__main__":
    kill, spec, out = sys.argv[1:4]
    install(kill)
    from phasespace.cli import main

    sys.exit(main(["run", spec, "--out", out, "--quiet", *sys.argv[4:]]))
