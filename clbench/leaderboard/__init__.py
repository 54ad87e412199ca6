"""The leaderboard: suites of task streams, multi-seed sweeps (a local process pool or a Ray
cluster), and a build that validates result files, aggregates seeds and writes a Markdown
table, a self-contained HTML page and plots, byte-identical on rebuild.

- :mod:`~clbench.leaderboard.suites`: which streams a suite holds;
- :mod:`~clbench.leaderboard.variants`: agent specs (``independent[dtype=int4]``), their folders;
- :mod:`~clbench.leaderboard.sweep`: run (entry, agent variant, seed) jobs, resumable;
- :mod:`~clbench.leaderboard.aggregate`: group runs, mean/std/95% interval, table formats;
- :mod:`~clbench.leaderboard.build`: validate a results folder and write the leaderboard;
- :mod:`~clbench.leaderboard.plots` and :mod:`~clbench.leaderboard.page`: PNGs and HTML;
- :mod:`~clbench.leaderboard.cli`: ``clbench leaderboard list|run|build``.
"""
