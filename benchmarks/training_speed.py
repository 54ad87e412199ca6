"""Training speed: `naive` against a hand-written PyTorch loop, and achieved vs peak GFLOP/s.

(a) Learn seconds of the `naive` baseline over a whole stream against a hand-written loop
    doing the same work: the same reference net (shared trunk, one 2-way head per task), the
    same initialisation and data, SGD lr 0.01 momentum 0.5, batch 64, the same epochs. The
    hand-written loop is what a PyTorch user writes: index a batch, normalise it, zero_grad,
    forward, backward, step. Both run in this process, taking turns; the table gives the
    median of the rounds, their ratio and each one's ACC after the stream (test split).
(d) Achieved training GFLOP/s (FLOPs of naive's learn over the stream, counted once with
    `clbench.costs.count_flops`, over its median seconds) against the machine's measured
    matrix-multiply rate (square `torch.mm`s at the same thread count, taking turns with the
    two loops of (a) in the same rounds).
With --compile, also the break-even of `torch.compile` on the training step: its
compilation seconds over the seconds it saves per step, in steps and in tasks of the stream.

Streams: SplitMNIST5k (offline) and full SplitFashionMNIST where its data is installed
(Debian's dataset-fashion-mnist). One thread by default (--threads), so that a shared
machine's load disturbs the comparison less.

    python benchmarks/training_speed.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from timing import FASHION_STREAM, OFFLINE_STREAM, interleaved, markdown, median, stream_tasks

from baselines.naive import Naive
from clbench.costs import count_flops
from clbench.data import dataset_info
from clbench.nets import MultiHeadNet
from clbench.tasks import Task
from clbench.training import minibatches, sgd

LEARNING_RATE, MOMENTUM, BATCH_SIZE = 0.01, 0.5, 64


def hand_normalized(images: torch.Tensor, dataset: str) -> torch.Tensor:
    """Normalisation as a user writes it inline: to float, [0, 1], per-channel mean/std."""
    info = dataset_info(dataset)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def hand_written_loop(tasks: list[Task], epochs: int, seed: int) -> MultiHeadNet:
    """The loop a PyTorch user writes for naive fine-tuning (no clbench training code)."""
    torch.manual_seed(seed)
    net = MultiHeadNet(tasks[0].input_shape)
    for task in tasks:
        net.add_head()
        optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(task.y_train))
            for start in range(0, len(order), BATCH_SIZE):
                index = order[start:start + BATCH_SIZE]
                inputs = hand_normalized(task.x_train[index], task.dataset)
                optimizer.zero_grad()
                F.cross_entropy(net(inputs, task.id), task.y_train[index]).backward()
                optimizer.step()
    return net


def naive_learn(tasks: list[Task], epochs: int, seed: int) -> Naive:
    torch.manual_seed(seed)
    agent = Naive(epochs=epochs, lr=LEARNING_RATE, momentum=MOMENTUM, batch_size=BATCH_SIZE)
    for task in tasks:
        agent.learn(task.for_agent())
    return agent


def final_acc(predict, tasks: list[Task]) -> float:
    """Mean test accuracy over the stream's tasks after the last one."""
    with torch.no_grad():
        return statistics.fmean((predict(task).cpu() == task.y_test.cpu()).double().mean().item()
                                for task in tasks)


MATMUL_SIZE, MATMUL_REPEATS = 1024, 10


def matmuls(a: torch.Tensor, b: torch.Tensor) -> None:
    """The machine's reference work: ``MATMUL_REPEATS`` float32 square matrix multiplies."""
    for _ in range(MATMUL_REPEATS):
        torch.mm(a, b)


def compile_break_even(tasks: list[Task], epochs: int, rounds: int) -> list[object]:
    """(compile s, eager ms/step, compiled ms/step, break-even steps, break-even tasks)."""
    torch.manual_seed(0)
    net = MultiHeadNet(tasks[0].input_shape)
    net.add_head()
    task = tasks[0]
    batches = list(minibatches(task.x_train, task.y_train, task.dataset, BATCH_SIZE))
    full = [batch for batch in batches if len(batch[1]) == BATCH_SIZE]
    optimizer = sgd(net.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(x, 0), y)

    compiled = torch.compile(loss)

    def steps(step_loss) -> None:
        for x, y in full:
            optimizer.zero_grad(set_to_none=True)
            step_loss(x, y).backward()
            optimizer.step()

    start = time.perf_counter()
    x, y = full[0]
    compiled(x, y).backward()
    compile_seconds = time.perf_counter() - start
    seconds = interleaved({"eager": lambda: steps(loss), "compiled": lambda: steps(compiled)},
                          rounds)
    eager_ms, compiled_ms = (median(seconds[k]) / len(full) * 1e3 for k in ("eager", "compiled"))
    steps_per_task = epochs * len(batches)
    if compiled_ms < eager_ms:
        break_even = compile_seconds / ((eager_ms - compiled_ms) / 1e3)
        return [f"{compile_seconds:.1f}", f"{eager_ms:.2f}", f"{compiled_ms:.2f}",
                f"{break_even:,.0f}", f"{break_even / steps_per_task:,.1f}"]
    return [f"{compile_seconds:.1f}", f"{eager_ms:.2f}", f"{compiled_ms:.2f}", "never", "never"]


def measure_stream(env_id: str, tasks: list[Task],
                   args: argparse.Namespace) -> tuple[list[object], list[object]]:
    """The stream's rows of tables (a) and (d)."""
    hand = hand_written_loop(tasks, args.epochs, args.seed)
    hand.eval()
    agent = naive_learn(tasks, args.epochs, args.seed)
    hand_acc = final_acc(
        lambda task: hand(hand_normalized(task.x_test, task.dataset), task.id).argmax(1), tasks)
    naive_acc = final_acc(lambda task: agent.predict(task.x_test, task.id), tasks)
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    seconds = interleaved({
        "hand": lambda: hand_written_loop(tasks, args.epochs, args.seed),
        "naive": lambda: naive_learn(tasks, args.epochs, args.seed),
        "mm": lambda: matmuls(a, b),
    }, args.rounds)
    peak = 2 * MATMUL_SIZE**3 * MATMUL_REPEATS / median(seconds["mm"]) / 1e9
    hand_s, naive_s = median(seconds["hand"]), median(seconds["naive"])
    speed_row = [env_id, len(tasks), sum(len(t.y_train) for t in tasks), f"{hand_s:.2f}",
                 f"{naive_s:.2f}", f"{naive_s / hand_s:.3f}", f"{hand_acc:.4f}",
                 f"{naive_acc:.4f}"]
    flops = count_flops(lambda: naive_learn(tasks, args.epochs, args.seed))
    achieved = flops / naive_s / 1e9
    rate_row = [env_id, f"{flops / 1e9:.1f}", f"{achieved:.1f}", f"{peak:.1f}",
                f"{achieved / peak:.2f}"]
    return speed_row, rate_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true",
                        help="also measure torch.compile's break-even (a minute or more)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    speed_rows, rate_rows, compile_rows = [], [], []
    for env_id in (OFFLINE_STREAM, FASHION_STREAM):
        tasks = stream_tasks(env_id, args.seed)
        if tasks is None:
            print(f"skipped {env_id}: its data is not installed")
            continue
        speed_row, rate_row = measure_stream(env_id, tasks, args)
        speed_rows.append(speed_row)
        rate_rows.append(rate_row)
        if args.compile and env_id == OFFLINE_STREAM:
            compile_rows.append([env_id, *compile_break_even(tasks, args.epochs, args.rounds)])

    print(f"\n(a) naive vs hand-written loop: learn seconds over the whole stream, "
          f"{args.epochs} epoch(s), batch {BATCH_SIZE}, {args.threads} thread(s), median of "
          f"{args.rounds} interleaved rounds\n")
    print(markdown(["stream", "tasks", "train examples", "hand-written s", "naive s",
                    "naive / hand", "hand ACC", "naive ACC"], speed_rows))
    print(f"\n(d) achieved training rate of naive vs {MATMUL_REPEATS} {MATMUL_SIZE}x"
          f"{MATMUL_SIZE} torch.mm, timed in the same rounds as (a), {args.threads} thread(s)\n")
    print(markdown(["stream", "learn GFLOP", "achieved GFLOP/s", "torch.mm GFLOP/s",
                    "achieved / mm"], rate_rows))
    if compile_rows:
        print("\ntorch.compile of the training step (MNIST net, batch 64): break-even = "
              "compile seconds / seconds saved per step\n")
        print(markdown(["stream", "compile s", "eager ms/step", "compiled ms/step",
                        "break-even steps", "break-even tasks"], compile_rows))


if __name__ == "__main__":
    main()
