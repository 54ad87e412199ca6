"""Sealed evaluation: agent code runs only in fresh, sandboxed worker processes.

- :mod:`~clbench.sealed.calls`: the agent calls (build from a state, learn, predict),
  seeded from (run seed, task, purpose); they run inside a worker.
- :mod:`~clbench.sealed.channel`: the framed byte channel (JSON header + raw blobs; the
  harness never unpickles what a worker sends).
- :mod:`~clbench.sealed.sandbox`: the bubblewrap sandbox and the dataset files it hides.
- :mod:`~clbench.sealed.zygote`: the process that has torch imported and forks workers.
- :mod:`~clbench.sealed.workers`: the harness's side (:class:`WorkerPool`).
"""
