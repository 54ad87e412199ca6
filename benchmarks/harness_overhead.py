"""Harness overhead: wall time of `clbench run` with naive vs a hand-written PyTorch loop.

Both do the same training on the same data (the env's tasks for the same seed: naive's
shared trunk, one head per task, SGD lr 0.01 momentum 0.5, batch 64) and both evaluate
every seen task after each task. Each is timed as a whole process (start-up included),
alternating, and the ratio of medians is printed. `clbench run` is sealed: every learn and
predict runs in a fresh worker forked from a zygote (under bubblewrap where it works). It is
timed with --no-flops (a learn worker and a predict worker per task) and as configured by
default (also a FLOP-counted replay of every learn, checked for reproducibility, and a
FLOP-counted predict, each in its own worker). The in-process harness (`seal=False`, no
FLOPs) is timed too, and the median worker start (fork to ready, from the result file).

    python benchmarks/harness_overhead.py --env clbench/OneVsRestMNIST5k-v0 --epochs 10

With ``--tuple-tasks N`` it also prints the per-task overhead of sealing on a long stream:
(sealed `clbench run --no-flops` - the same with `--no-seal`) / N, on TupleMNIST5k with N
tasks, naive with 1 epoch; ``--tuple-train`` / ``--tuple-test`` cap each task's training
and test examples (2,000 and 500 in full; the full 333-task matrix is 27.8M predictions).

    python benchmarks/harness_overhead.py --tuple-tasks 333 --tuple-train 200 --tuple-test 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HAND_LOOP = r'''
import sys, time, torch, torch.nn.functional as F, gymnasium as gym, clbench
from clbench.nets import MultiHeadNet
env_id, seed, epochs, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
began = time.perf_counter()
env = gym.make(env_id, device=device).unwrapped
env.reset(seed=seed)
tasks = [env.task(i) for i in range(env.n_tasks)]
torch.manual_seed(seed)
net = MultiHeadNet(tasks[0].input_shape).to(device)
mean, std = 0.1307, 0.3081
for task in tasks:
    net.add_head()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.5)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(task.y_train), device=device)
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            x = (task.x_train[idx].float() / 255 - mean) / std
            opt.zero_grad()
            F.cross_entropy(net(x, task.id), task.y_train[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        row = [(net((t.x_test.float() / 255 - mean) / std, t.id).argmax(1) == t.y_test)
               .float().mean().item() for t in tasks[:task.id + 1]]
print(sum(row) / len(row))
print(time.perf_counter() - began)
'''

# naive's recipe overrides that make it train as the hand-written loop does
HAND_LOOP_RECIPE = {"lr": 0.01, "momentum": 0.5, "batch_size": 64, "holdout_fraction": 0}
# The harness alone, in the same process: no workers, no FLOP count.
HARNESS_IN_PROCESS = r'''
import json, sys, time, clbench, clbench.harness
env_id, seed, epochs, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
clbench.evaluate("naive", env_id, seed=seed, device=device,
                 agent_kwargs={"epochs": epochs, **json.loads(sys.argv[5])}, flops=False,
                 seal=False)
print(time.perf_counter() - start)
'''


def timed(command: list[str]) -> tuple[float, float | None]:
    """(whole-process wall seconds, the seconds the process printed last, if it did)."""
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    try:
        return wall, float(lines[-1])
    except (IndexError, ValueError):
        return wall, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="clbench/OneVsRestMNIST5k-v0")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tuple-tasks", type=int, default=0,
                        help="also measure the per-task overhead on TupleMNIST5k (e.g. 333)")
    parser.add_argument("--tuple-train", type=int, help="training examples per tuple task")
    parser.add_argument("--tuple-test", type=int, help="test examples per tuple task")
    parser.add_argument("--skip-main", action="store_true",
                        help="only the tuple-stream measurement")
    args = parser.parse_args()
    if args.tuple_tasks:
        per_task_overhead(args.tuple_tasks, args.seed, args.device, args.tuple_train,
                          args.tuple_test)
    if args.skip_main:
        return

    with tempfile.TemporaryDirectory() as folder:
        clbench_run = [sys.executable, "-m", "clbench", "run", "--env", args.env,
                       "--agent", "naive", "--agent-arg", f"epochs={args.epochs}",
                       *[f"--agent-arg={key}={value}" for key, value in HAND_LOOP_RECIPE.items()],
                       "--seed", str(args.seed), "--device", args.device, "--quiet",
                       "--out", f"{folder}/r.json"]
        run_args = [args.env, str(args.seed), str(args.epochs), args.device]
        commands = {
            "hand-written loop": [sys.executable, "-c", HAND_LOOP, *run_args],
            "clbench run --no-flops": clbench_run + ["--no-flops"],
            "clbench run (default, FLOPs counted)": clbench_run,
            "clbench.evaluate in process, no FLOPs": [sys.executable, "-c",
                                                      HARNESS_IN_PROCESS, *run_args,
                                                      json.dumps(HAND_LOOP_RECIPE)],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        inside: dict[str, list[float]] = {name: [] for name in commands}
        starts: list[float] = []
        for _ in range(args.repeats):
            for name, command in commands.items():
                wall, printed = timed(command)
                times[name].append(wall)
                if printed is not None:
                    inside[name].append(printed)
                if name.startswith("clbench run"):
                    isolation = json.loads(Path(f"{folder}/r.json").read_text())["isolation"]
                    starts.append(isolation["worker_start_median_seconds"])
                    print(f"  {name}: {wall:.2f} s ({isolation['reason']})", flush=True)
                else:
                    print(f"  {name}: {wall:.2f} s", flush=True)

    print(f"{args.env}, naive, epochs={args.epochs}, device={args.device}, "
          f"{args.repeats} alternating repeats (median wall seconds)")
    report("whole process, start-up included", times, "clbench run")
    report("in process, after imports (interpreter start-up left out)", inside,
           "clbench.evaluate")
    print(f" median worker start (fork to ready, median over runs of each run's median): "
          f"{statistics.median(starts) * 1000:.1f} ms")


def per_task_overhead(n_tasks: int, seed: int, device: str, max_train: int | None = None,
                      max_test: int | None = None) -> None:
    """Sealed vs in-process `clbench run --no-flops` on a long stream, per task."""
    caps = {"max_train_per_task": max_train, "max_test_per_task": max_test}
    env_args = [f"--env-arg={key}={value}" for key, value in caps.items() if value]
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "clbench", "run", "--env", "clbench/TupleMNIST5k-v0",
                   "--env-arg", f"n_tasks={n_tasks}", *env_args, "--agent", "naive",
                   "--agent-arg", "epochs=1", "--seed", str(seed), "--device", device,
                   "--quiet", "--no-flops", "--out", f"{folder}/r.json"]
        sealed, _ = timed(command)
        in_process, _ = timed(command + ["--no-seal"])
    print(f"TupleMNIST5k, {n_tasks} tasks {caps}, naive, 1 epoch, --no-flops: sealed "
          f"{sealed:.1f} s, in process {in_process:.1f} s, sealing costs "
          f"{(sealed - in_process) / n_tasks * 1000:.0f} ms per task")


def report(title: str, times: dict[str, list[float]], prefix: str) -> None:
    base = statistics.median(times["hand-written loop"])
    print(f" {title}:")
    for name, values in times.items():
        if values and (name == "hand-written loop" or name.startswith(prefix)):
            median = statistics.median(values)
            print(f"  {name:38s} {median:7.2f} s   ratio {median / base:.3f}")


if __name__ == "__main__":
    main()
