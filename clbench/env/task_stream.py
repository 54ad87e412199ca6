"""The task-stream environment: one step is one task."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from clbench.data import dataset_info, load_dataset
from clbench.devices import resolve_device
from clbench.tasks import (
    DEFAULT_VALIDATION_FRACTION,
    EVALUATIONS,
    STREAMS,
    Task,
    TaskSpec,
    check_scenario,
    check_stream,
    materialize,
    require_one_labelling,
    stream_specs,
)
from clbench.tasks.materialization import validation_size

UNTOLD_TASK = -1  # the query task id shown under scenario="domain": the agent is not told


def padded_shape(shapes: Sequence[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The smallest (C, H, W) that holds every shape of a stream."""
    return tuple(max(shape[axis] for shape in shapes) for axis in range(3))


def pad_to(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """A fresh copy of ``images`` zero-padded at the end of each axis to ``shape``."""
    if tuple(images.shape[1:]) == tuple(shape):
        return images.clone()
    out = images.new_zeros((len(images), *shape))
    channels, height, width = images.shape[1:]
    out[:, :channels, :height, :width] = images
    return out


def crop(images: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Undo :func:`pad_to`: the native ``(C, H, W)`` inputs of one task (a view)."""
    channels, height, width = shape
    return images[:, :channels, :height, :width]


class TaskStreamEnv(gym.Env):
    """A stream of binary image-classification tasks for continual learning.

    ## Description

    Tasks arrive one after another (Split MNIST, one-vs-rest digits, random class tuples,
    mixed MNIST + CIFAR-10 streams). An agent learns each task when it arrives from that
    task's training data alone, and is then asked to label the test inputs of every task it
    has seen so far (or, with ``evaluation="validation"``, a held-out part of each task's
    training data). The environment keeps those labels and scores the answers, so retained
    accuracy (the accuracy matrix R[i][j]) is measured here, in one place.

    Two scenarios of van de Ven & Tolias (2019, "Three scenarios for continual learning"):
    task-incremental (``scenario="task"``, the default: each query's task is given, so an
    agent may keep one head per task) and domain-incremental (``scenario="domain"``: the
    agent is not told which task a query belongs to; label 1 is each task's first class set,
    so one labelling must hold across the stream, as in split streams).

    **One step is one task.** ``reset`` hands over task 0; each ``step`` scores the agent's
    labels for the current queries and hands over the next task.

    ## Action Space

    ``MultiBinary(max_queries)``: one predicted label (1 = positive) per query. The space
    holds one slot for every query the stream can ask at most, so its size never changes;
    only the first ``n_queries = len(obs["query_task_ids"])`` entries are read. An array or
    tensor of exactly ``n_queries`` labels is accepted too (the usual way to act).

    ## Observation Space

    A ``Dict`` of numpy arrays (``backend="numpy"``, the default, as Gymnasium's tools
    expect) or of torch tensors on the env's ``device`` (``backend="torch"``, which sets
    ``metadata["torch"] = True`` and saves the copy to the host):

    - ``task_id``: ``Discrete(n_tasks)``, the id of the task just handed over;
    - ``train_inputs``: ``Sequence(Box(0, 255, (C, H, W), uint8), stack=True)``, its
      training inputs;
    - ``train_labels``: ``Sequence(Discrete(2), stack=True)``, their labels (1 = positive);
    - ``query_inputs``: ``Sequence(Box(0, 255, (C, H, W), uint8), stack=True)``, the test
      inputs to label;
    - ``query_task_ids``: ``Sequence(Discrete(n_tasks), stack=True)``, the task of each query;
      under ``scenario="domain"`` ``Sequence(Discrete(n_tasks + 1, start=-1), stack=True)``
      holding -1 for every query (the task is not told), and the queries of all tasks come
      in one seeded shuffled order, so their position does not tell it either.

    All sequences are stacked tensors. In a stream whose tasks differ in input shape, every
    image is zero-padded to the smallest shape holding them all; ``info["input_shapes"]``
    gives each task's native shape and :func:`crop` recovers it. ``info["task"]`` holds the
    new task as a :class:`clbench.tasks.Task` at its native shape, without evaluation data;
    its ``scenario`` tells the agent which scenario it learns in.

    ## Rewards

    The mean accuracy over the tasks seen so far, including the one just learned, in
    [0, 1]. ``info["accuracies"]`` holds the accuracy on every task asked about (tasks
    0..t, or all tasks with ``query_future``): row t of the accuracy matrix.

    ## Starting State

    ``reset(seed=...)`` draws the stream (for ``tuples``), the seeded subsampling of every
    task and the order of the queries; the same seed gives the same episode.
    ``reset(seed=..., options={"start_task": k})`` starts the same episode at task k (to
    resume a run): the observation and ``info`` are those that k steps would reach, without
    the k steps (every task is drawn from (episode seed, task id) alone). What the seed
    varies: the tuple draws, the negative subsampling (``positive_fraction``) and the caps,
    the order of the training examples and of the queries, and the validation split; the
    harness also derives the agent's network initialisation from it. What it does not vary:
    the classes of split and one-vs-rest streams, and ``mnist5k``'s 4,000 / 1,000 train /
    test split, which is fixed (400 / 100 per class, drawn once with a constant seed).

    ## Episode End

    ``terminated`` is True after the step that scores the last task; the final observation
    has no training data and no queries. There is no truncation.

    ## Arguments

    - ``stream``: ``"split"``, ``"one_vs_rest"`` or ``"tuples"`` (see :mod:`clbench.tasks`).
    - ``dataset``: ``"mnist5k"`` (built in, offline), ``"mnist"``, ``"fashion_mnist"``,
      ``"cifar10"`` or ``"cifar100"``.
    - ``tasks``: an explicit list of task names (``"mnist:1|2,3"``) or specs; overrides
      ``stream`` and ``dataset`` and may mix datasets.
    - ``n_tasks``: number of tasks (default: all the builder has; 50 for tuples).
    - ``positive_fraction``: share of positives per task; the side in excess is subsampled,
      seeded, the same rule for train and test. ``None`` keeps the natural balance.
    - ``max_train_per_task`` / ``max_test_per_task``: caps on examples per task (seeded):
      training examples (before a validation part is held out) and queries per task.
    - ``evaluation``: ``"test"`` (default) or ``"validation"``. With ``"validation"`` each
      task's queries are a seeded, class-stratified ``validation_fraction`` of its training
      data (stratified by dataset class, the same rule for every dataset), that part is not
      handed to the agent, and the test split is never loaded: choose hyperparameters so.
    - ``validation_fraction``: share of each task's training data held out with
      ``evaluation="validation"`` (default 0.2); an error with ``evaluation="test"``.
    - ``scenario``: ``"task"`` (default; ``predict(x, task_id)``) or ``"domain"``
      (``predict(x, None)``); ``"domain"`` needs one labelling across the stream: tasks of
      one dataset and no class positive in one task and negative in another (split streams;
      one_vs_rest, tuples and mixed streams are refused). The ``Domain*`` ids set it.
    - ``query_future``: also ask for the test inputs of tasks not seen yet (forward transfer).
    - ``device``: where data and observations live: ``"cpu"``, ``"cuda"``, ``"mps"``,
      ``"auto"``.
    - ``backend``: ``"numpy"`` or ``"torch"``: the type of observations (see above); actions
      may be either type with either backend. Gymnasium's passive checker (applied by
      ``make``) understands numpy only, so with ``"torch"`` pass
      ``disable_env_checker=True`` to ``make`` as the harness does; Gymnasium 1.4's
      ``check_env`` cannot check torch envs at all (it calls a ``TorchToNumpy`` wrapper that
      release lacks), so check the default numpy backend.
    - ``data_root``: folder of the full datasets (default ``$CLBENCH_DATA`` or
      ``~/.cache/clbench``).

    ## Version History

    - v0: initial version; later given the ``evaluation``, ``validation_fraction`` and
      ``scenario`` kwargs, whose defaults leave every episode as it was, and the reset
      option ``start_task``.
    """

    metadata = {"render_modes": [], "torch": False}

    def __init__(
        self,
        stream: str = "split",
        dataset: str = "mnist5k",
        tasks: Sequence[str | TaskSpec] | None = None,
        n_tasks: int | None = None,
        positive_fraction: float | None = None,
        max_train_per_task: int | None = None,
        max_test_per_task: int | None = None,
        query_future: bool = False,
        device: str = "cpu",
        data_root: str | os.PathLike | None = None,
        backend: str = "numpy",
        evaluation: str = "test",
        validation_fraction: float | None = None,
        scenario: str = "task",
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r}: this environment does not render")
        self.evaluation, self.scenario = evaluation, scenario
        self.validation_fraction = _check_evaluation(evaluation, validation_fraction)
        check_scenario(scenario)
        if tasks is not None:
            self._fixed_specs = stream_specs(stream, dataset, tasks, n_tasks)
            if not self._fixed_specs:
                raise ValueError("tasks=[] : a stream needs at least one task")
            if n_tasks is not None and n_tasks != len(self._fixed_specs):
                raise ValueError(f"n_tasks={n_tasks} disagrees with the {len(self._fixed_specs)} "
                                 "tasks given; leave n_tasks out")
            datasets = sorted({spec.dataset for spec in self._fixed_specs})
        else:
            if stream not in STREAMS:
                raise ValueError(f"unknown stream {stream!r}; choose one of {', '.join(STREAMS)}"
                                 " or pass tasks=[...]")
            dataset_info(dataset)
            if stream == "tuples":
                n_tasks = check_stream(stream, dataset, n_tasks)  # before loading any data
            self._fixed_specs = stream_specs(stream, dataset, None, n_tasks)
            datasets = [dataset]
        if scenario == "domain":
            require_one_labelling(self._fixed_specs)
        for name, value in (("max_train_per_task", max_train_per_task),
                            ("max_test_per_task", max_test_per_task)):
            if value is not None and value < 2:
                raise ValueError(f"{name}={value}: give at least 2 examples, or None for all")
        self.stream, self.dataset = stream, dataset
        self.n_tasks = len(self._fixed_specs) if self._fixed_specs is not None else int(n_tasks)
        self.positive_fraction = positive_fraction
        self.max_train_per_task = max_train_per_task
        self.max_test_per_task = max_test_per_task
        self.query_future = bool(query_future)
        self.device = resolve_device(device)
        self.data_root = data_root
        self.render_mode = None
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend={backend!r}: choose 'numpy' or 'torch'")
        self.backend = backend
        self.metadata = {**self.metadata, "torch": backend == "torch"}

        # Load every dataset now: a missing one fails at make(), not mid-episode. With
        # evaluation="validation" the test split is never loaded.
        train_sizes = [len(load_dataset(name, train=True, root=data_root, device=self.device))
                       for name in datasets]
        if evaluation == "test":
            query_sizes = [len(load_dataset(name, train=False, root=data_root,
                                            device=self.device)) for name in datasets]
        else:
            query_sizes = [validation_size(size if max_train_per_task is None else min(
                size, max_train_per_task), self.validation_fraction) for size in train_sizes]
        if not max(query_sizes):
            raise ValueError(
                f"validation_fraction={self.validation_fraction} of at most "
                f"{max(train_sizes) if max_train_per_task is None else max_train_per_task} "
                "training examples per task holds out none; raise max_train_per_task or "
                "validation_fraction")
        self.input_shape = padded_shape([dataset_info(name).input_shape for name in datasets])
        per_task = max(query_sizes) if max_test_per_task is None else min(
            max(query_sizes), max_test_per_task)
        self.max_queries = self.n_tasks * per_task

        image = spaces.Box(0, 255, self.input_shape, dtype=np.uint8)
        self.observation_space = spaces.Dict({
            "task_id": spaces.Discrete(self.n_tasks),
            "train_inputs": spaces.Sequence(image, stack=True),
            "train_labels": spaces.Sequence(spaces.Discrete(2), stack=True),
            "query_inputs": spaces.Sequence(image, stack=True),
            "query_task_ids": spaces.Sequence(
                spaces.Discrete(self.n_tasks + 1, start=UNTOLD_TASK) if scenario == "domain"
                else spaces.Discrete(self.n_tasks), stack=True),
        })
        self.action_space = spaces.MultiBinary(self.max_queries)

        self.specs: list[TaskSpec] = []
        self.tasks: list[Task | None] = []
        self._episode_seed = 0
        self._current = -1
        self._query_ids: torch.Tensor | None = None
        self._query_labels: torch.Tensor | None = None

    # ------------------------------------------------------------------ episode
    @property
    def task_names(self) -> tuple[str, ...]:
        """Names of this episode's tasks, in stream order."""
        return tuple(spec.name for spec in self.specs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        start = _start_task(options, self.n_tasks)
        super().reset(seed=seed)
        self._episode_seed = int(self.np_random.integers(2**31 - 1))
        if self._fixed_specs is not None:
            self.specs = list(self._fixed_specs)
        else:
            self.specs = STREAMS["tuples"](self.dataset, self.n_tasks, seed=self._episode_seed)
        self.tasks = [None] * self.n_tasks
        self._current = start
        if self.query_future:
            for task_id in range(self.n_tasks):
                self.task(task_id)
        return self._observe(start), self._arrival_info(start)

    def step(self, action):
        if self._current < 0:
            raise RuntimeError("call reset() before step()")
        if self._current >= self.n_tasks:
            raise RuntimeError("the episode has terminated; call reset() to start a new one")
        predictions = self._read_action(action)
        accuracies = self._score(predictions)
        scored = self._current
        reward = float(np.mean(accuracies[: scored + 1]))
        self._current += 1
        terminated = self._current == self.n_tasks
        info = {"scored_task_id": scored, "accuracies": accuracies}
        if terminated:
            obs = self._terminal_observation()
        else:
            obs = self._observe(self._current)
            info.update(self._arrival_info(self._current))
        return obs, reward, terminated, False, info

    def score(self, action) -> np.ndarray:
        """Accuracies of ``action`` on the current queries, without advancing the episode.

        The harness uses it once after ``reset`` with ``query_future``: the labels of the
        freshly built agent give FWT's baseline b_i (Lopez-Paz & Ranzato 2017).
        """
        if not 0 <= self._current < self.n_tasks:
            raise RuntimeError("score() needs a running episode: call reset() first")
        return self._score(self._read_action(action))

    # ------------------------------------------------------------------ helpers
    def task(self, task_id: int) -> Task:
        """Task ``task_id`` of this episode with its evaluation data (for analysis, not agents):
        ``x_test`` / ``y_test``, or ``x_val`` / ``y_val`` with ``evaluation="validation"``."""
        if self.tasks[task_id] is None:
            self.tasks[task_id] = materialize(
                self.specs[task_id], task_id, self._episode_seed,
                positive_fraction=self.positive_fraction,
                max_train=self.max_train_per_task, max_test=self.max_test_per_task,
                root=self.data_root, device=self.device, evaluation=self.evaluation,
                validation_fraction=self.validation_fraction, scenario=self.scenario,
            )
        return self.tasks[task_id]

    def _evaluation_data(self, task_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The query inputs and labels of one task: its test or its validation data."""
        task = self.task(task_id)
        if self.evaluation == "validation":
            return task.x_val, task.y_val
        return task.x_test, task.y_test

    def _queried_tasks(self, task_id: int) -> range:
        return range(self.n_tasks if self.query_future else task_id + 1)

    def _observe(self, task_id: int) -> dict[str, Any]:
        task = self.task(task_id)
        queried = [self._evaluation_data(j) for j in self._queried_tasks(task_id)]
        self._query_ids = torch.cat([
            torch.full((len(labels),), j, dtype=torch.int64, device=self.device)
            for j, (_, labels) in enumerate(queried)
        ])
        self._query_labels = torch.cat([labels for _, labels in queried])
        query_inputs = torch.cat([pad_to(inputs, self.input_shape) for inputs, _ in queried])
        shown_ids = self._query_ids.clone()
        if self.scenario == "domain":
            # One seeded order across tasks, and no task ids: nothing tells a query's task.
            order = torch.from_numpy(np.random.default_rng(
                [self._episode_seed, task_id, 2]).permutation(len(shown_ids))).to(self.device)
            self._query_ids = self._query_ids[order]
            self._query_labels = self._query_labels[order]
            query_inputs = query_inputs[order]
            shown_ids = torch.full_like(shown_ids, UNTOLD_TASK)
        return self._as_backend({
            "task_id": task_id,
            "train_inputs": pad_to(task.x_train, self.input_shape),
            "train_labels": task.y_train.clone(),
            "query_inputs": query_inputs,
            "query_task_ids": shown_ids,
        })

    def _terminal_observation(self) -> dict[str, Any]:
        self._query_ids = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._query_labels = self._query_ids.clone()
        empty_images = torch.zeros((0, *self.input_shape), dtype=torch.uint8, device=self.device)
        return self._as_backend({
            "task_id": self.n_tasks - 1,
            "train_inputs": empty_images,
            "train_labels": self._query_ids.clone(),
            "query_inputs": empty_images.clone(),
            "query_task_ids": self._query_ids.clone(),
        })

    def _as_backend(self, obs: dict[str, Any]) -> dict[str, Any]:
        # Every tensor here is freshly made, so numpy views of it share no memory with
        # earlier observations (Gymnasium's check_env tests exactly that).
        if self.backend == "torch":
            return obs
        return {key: value.cpu().numpy() if torch.is_tensor(value) else value
                for key, value in obs.items()}

    def _arrival_info(self, task_id: int) -> dict[str, Any]:
        return {
            "task": self.task(task_id).for_agent(),
            "task_name": self.specs[task_id].name,
            "task_names": self.task_names,
            "input_shapes": tuple(spec.input_shape for spec in self.specs),
            "n_queries": int(len(self._query_ids)),
        }

    def _read_action(self, action) -> torch.Tensor:
        n_queries = len(self._query_ids)
        predictions = torch.as_tensor(np.asarray(action) if isinstance(action, list) else action)
        if predictions.ndim != 1 or len(predictions) not in (n_queries, self.max_queries):
            raise ValueError(
                f"action has shape {tuple(predictions.shape)}; expected one label per query, "
                f"shape ({n_queries},), or the action space's ({self.max_queries},)"
            )
        predictions = predictions[:n_queries].to(self.device)
        if predictions.is_floating_point() and torch.isnan(predictions).any():
            raise ValueError("action holds NaN; labels must be 0 or 1")
        if ((predictions != 0) & (predictions != 1)).any():
            bad = predictions[(predictions != 0) & (predictions != 1)][:5].tolist()
            raise ValueError(f"action holds values other than 0 and 1, e.g. {bad}")
        return predictions.to(torch.int64)

    def _score(self, predictions: torch.Tensor) -> np.ndarray:
        correct = (predictions == self._query_labels).to(torch.float64)
        totals = torch.zeros(self.n_tasks, dtype=torch.float64, device=self.device)
        totals.index_add_(0, self._query_ids, correct)
        counts = torch.bincount(self._query_ids, minlength=self.n_tasks).to(torch.float64)
        asked = len(self._queried_tasks(self._current))
        return (totals / counts)[:asked].cpu().numpy()


def _start_task(options: dict[str, Any] | None, n_tasks: int) -> int:
    """The task an episode starts at: ``options["start_task"]``, else 0."""
    unknown = sorted(set(options or {}) - {"start_task"})
    if unknown:
        raise ValueError(f"reset options {unknown}: the only option is 'start_task'")
    start = (options or {}).get("start_task", 0)
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not (
            0 <= start < n_tasks):
        raise ValueError(f"start_task={start!r}: give a task id from 0 to {n_tasks - 1}")
    return int(start)


def _check_evaluation(evaluation: str, validation_fraction: float | None) -> float:
    """Validate the evaluation kwargs; return the validation fraction in use."""
    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation={evaluation!r}: choose one of {', '.join(EVALUATIONS)}")
    if validation_fraction is None:
        return DEFAULT_VALIDATION_FRACTION
    if evaluation == "test":
        raise ValueError(f"validation_fraction={validation_fraction} has no effect with "
                         "evaluation='test'; pass evaluation='validation' too, or leave it out")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in (0, 1), e.g. "
                         f"{DEFAULT_VALIDATION_FRACTION}")
    return float(validation_fraction)
