"""Training regimes: ``train_targets: last`` (RecBole's prefix augmentation), ``all`` or ``cloze``.

``last`` trains one sample per prefix of every history, each read at its last position:
RecBole's own sequential training, unchanged. ``all`` trains a causal model on whole
histories with a target at every position. For a causal model the output at position t of a
history is the output of the prefix that ends at t, so ``all`` trains the same targets as
``last`` in one pass per history instead of one pass per prefix.

The ``all`` samples are windows of each user's training history (what RecBole's split left for
training), cut as follows. A user whose training history is ``x_0 .. x_T`` has T targets
``x_1 .. x_T``; target ``x_{i+1}`` is predicted at input position i. The T input positions are
cut into windows of at most ``MAX_ITEM_LIST_LENGTH``, from the newest backwards, so the newest
window is full and the oldest holds the remainder: T = 450 at L = 200 gives the windows of
inputs ``[250, 450)``, ``[50, 250)`` and ``[0, 50)``. Every target is trained exactly once per
epoch. A target whose history is no longer than L sees exactly the context it sees under
``last``; in a user longer than L, a target early in a window sees less context than ``last``
gives it (the window's start, not L items back).

``train_window_stride: S`` (1..L; unset: L) lets windows overlap so that every target keeps at
least ``L - S`` items of context: the input positions with a target are cut into pieces of S from
the newest backwards (the oldest piece holds the remainder), and each piece's window is the piece
with up to ``L - S`` input positions before it, read as context only (their targets are trained
by the window of their own piece, so no target is counted twice). T = 450 at L = 200 and S = 150
gives the windows ``[100, 300)`` training ``[150, 300)`` (50 of context) and ``[0, 150)`` training
all of it, besides ``[250, 450)`` training ``[300, 450)``. S = 1 is RecBole's ``last`` exactly:
one window per target, holding the L items before it (or the whole prefix). The encoder's cost
grows about L / S times; the CE loss is computed for the same targets as without overlap.

``cloze`` trains a bidirectional model (Hydra4Rec) as BERT4Rec trains its encoder: the same
windows, each with its last target appended (up to ``MAX_ITEM_LIST_LENGTH + 1`` items), a
fraction ``mask_ratio`` of the items replaced by a mask token, and the loss taken at the masked
positions only (at least one per window). The model predicts the next item by appending the mask
token after the history and reading that position.

Validation and test are RecBole's full-sort evaluation of the last position in every regime.
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils.enum_type import FeatureType

from recbole_ssm.errors import ConfigError
from recbole_ssm.histories import histories_of, training_histories  # noqa: F401  (re-exported)
from recbole_ssm.targets import (  # noqa: F401  (re-exported: the names' home is targets.py)
    NEG_TARGETS,
    TARGETS,
    TRAIN_TARGETS,
    WINDOW_REGIMES,
    supported_targets,
    trains_every_prefix,
)
from recbole_ssm.validate import positive_int, require


def check_train_targets(config, model_class) -> str:
    """Return ``config['train_targets']`` ('last' when unset), or raise a ConfigError naming the fix."""
    value = config["train_targets"] or "last"
    if value not in TRAIN_TARGETS:
        raise ConfigError(f"invalid train_targets={value!r}: 'last' (one sample per prefix), 'all' (every "
                          "position; causal models) or 'cloze' (masked items; bidirectional models)")
    name = model_class.__name__
    if value == "all" and not trains_every_prefix(config, model_class):
        if "all" in supported_targets(model_class):  # Hydra4Rec with more than one layer
            raise ConfigError(
                f"train_targets=all cannot train {name} with num_layers={config['num_layers']}: with more than "
                "one bidirectional layer a position's output would see its own target; use num_layers=1 (its "
                "every-prefix pass is exact), causal=True (the forward direction only), or "
                "train_targets=cloze or last"
            )
        raise ConfigError(
            f"train_targets=all cannot train {name}: it is bidirectional, so every position would see "
            f"its own target; use train_targets=cloze (masked items) or last"
        )
    if value not in supported_targets(model_class):
        from recbole_ssm.registry import models_supporting

        raise ConfigError(
            f"train_targets={value} is not available for {name}; models that support it: "
            + ", ".join(models_supporting(value))
        )
    if value in WINDOW_REGIMES:
        require(config, "train_window_batch_size", positive_int, "a positive integer (windows per batch)")
    if config["train_window_positions"] is not None:
        if value not in WINDOW_REGIMES:
            raise ConfigError(f"train_window_positions applies to train_targets=all or cloze, not {value}; "
                              "unset it (train_window_positions=~) or train with train_targets=all")
        width = config["MAX_ITEM_LIST_LENGTH"] + (value == "cloze")
        require(config, "train_window_positions", lambda v: positive_int(v) and v >= width,
                f"a whole number of padded positions a batch, at least one full window ({width})")
    if config["train_window_stride"] is not None:
        if value != "all":
            raise ConfigError(f"train_window_stride applies to train_targets=all only, not {value}; "
                              "unset it (train_window_stride=~) or train with train_targets=all")
        max_len = config["MAX_ITEM_LIST_LENGTH"]
        require(config, "train_window_stride", lambda v: positive_int(v) and v <= max_len,
                f"a whole number from 1 to MAX_ITEM_LIST_LENGTH ({max_len}): the new targets per window")
    if value == "cloze":
        require(config, "mask_ratio", lambda v: 0.0 < float(v) < 1.0, "a fraction in (0, 1) of items to mask")
    return value


class WindowDataset(SequentialDataset):
    """RecBole's SequentialDataset for the window regimes (``all``, ``cloze``), without the table
    of every prefix.

    RecBole's augmentation writes one row per prefix with an item list of width
    ``MAX_ITEM_LIST_LENGTH``: (interactions x L) for every list field, 16 GB for ML-1M at L=2048.
    The window regimes read each user's training history only, and the evaluation reads each
    user's last two prefixes. This dataset keeps the histories flat in ``train_histories``
    (``training_histories``'s triple) and builds RecBole's prefix rows, exactly as RecBole does,
    for each user's first target and last three targets only, so that RecBole's leave-one-out
    split gives the same validation and test samples in the same order (and two training rows a
    user, which the window loaders do not read). ``user_sequences`` holds every user's items in
    time order, for serving.
    """

    def _load_feat(self, filepath, source):
        from recbole_ssm.compat import c_engine_atomic_files

        with c_engine_atomic_files():
            return super()._load_feat(filepath, source)

    def data_augmentation(self):
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        uids = self.inter_feat[self.uid_field].numpy()
        n = len(uids)
        starts = np.flatnonzero(np.r_[True, uids[1:] != uids[:-1]]) if n else np.zeros(0, dtype=np.int64)
        ends = np.r_[starts[1:], n].astype(np.int64)
        # the flat training histories: each user's items but the last two (validation and test
        # targets), for the users with a training target, in the order training_histories gives
        # them (that of RecBole's training split: users by the time of their first target)
        items = self.inter_feat[self.iid_field].numpy()
        times = self.inter_feat[self.time_field].numpy()
        sizes = np.maximum(ends - 2 - starts, 0)
        users = np.flatnonzero(sizes >= 2)
        users = users[np.argsort(times[starts[users] + 1], kind="stable")]
        self.user_sequences = {int(uids[a]): items[a:b].astype(np.int64) for a, b in zip(starts, ends)}
        parts = [items[starts[u]: starts[u] + sizes[u]] for u in users]
        self.train_histories = (torch.from_numpy(np.concatenate(parts or [np.zeros(0)]).astype(np.int64)),
                                torch.from_numpy(np.r_[0, np.cumsum(sizes[users])].astype(np.int64)),
                                torch.from_numpy(uids[starts[users]].astype(np.int64)))
        # RecBole's prefix rows for each user's first target and last three targets (a user's first item
        # is no target). The first keeps the users' order in RecBole's split, which groups rows by
        # user in the order users first appear in time.
        start_of, end_of = np.repeat(starts, ends - starts), np.repeat(ends, ends - starts)
        position = np.arange(n)
        target = np.flatnonzero((position > start_of) & ((position == start_of + 1) | (position >= end_of - 3)))
        seq_start = np.maximum(start_of[target], target - self.max_item_list_len)
        self._prefix_rows(target, seq_start, target - seq_start)

    def _prefix_rows(self, target: np.ndarray, seq_start: np.ndarray, length: np.ndarray) -> None:
        """Replace ``inter_feat`` with RecBole's augmented rows for these targets."""
        new_data = self.inter_feat[target]
        new_dict = {self.item_list_length_field: torch.from_numpy(length.astype(np.int64))}
        for field in self.inter_feat:
            if field == self.uid_field:
                continue
            list_field = getattr(self, f"{field}_list_field")
            list_len = self.field2seqlen[list_field]
            shape = (len(target), list_len) if isinstance(list_len, int) else (len(target),) + list_len
            if self.field2type[field] in [FeatureType.FLOAT, FeatureType.FLOAT_SEQ] \
                    and field in self.config["numerical_features"]:
                shape += (2,)
            value = self.inter_feat[field]
            new_dict[list_field] = _gather_lists(value, seq_start, length, shape)
        new_data.update(Interaction(new_dict))
        self.inter_feat = new_data


def _gather_lists(value: torch.Tensor, seq_start: np.ndarray, length: np.ndarray, shape: tuple) -> torch.Tensor:
    """RecBole's item-list rows: row r holds ``value[seq_start[r] : seq_start[r] + length[r]]``,
    zero-padded on the right to ``shape[1]`` (the rows of ``value`` may themselves be vectors)."""
    width = shape[1]
    start = torch.from_numpy(np.asarray(seq_start, dtype=np.int64))
    size = torch.from_numpy(np.asarray(length, dtype=np.int64))
    padded = torch.cat([value, torch.zeros((1,) + tuple(value.shape[1:]), dtype=value.dtype)])  # (N + 1, ...)
    pos = torch.arange(width)
    at = torch.where(pos.unsqueeze(0) < size.unsqueeze(1), start.unsqueeze(1) + pos, len(value))  # (R, W)
    return padded[at].reshape(shape)


def create_dataset(config):
    """RecBole's ``create_dataset``; under the window regimes a :class:`WindowDataset`."""
    from recbole.data import create_dataset as recbole_create_dataset

    if (config["train_targets"] or "last") in WINDOW_REGIMES and config["benchmark_filename"] is None:
        return WindowDataset(config)
    return recbole_create_dataset(config)


def cut_windows(history_lengths: torch.Tensor, max_len: int, stride: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows of input positions for histories of the given lengths (see the module docstring).

    A history of length n has n - 1 input positions with a target. Returns ``(history, start,
    size, context)`` per window: the history's index, the window's first input position in it,
    its number of inputs (1..max_len) and how many of its first inputs are context only (0 unless
    ``stride`` < max_len), newest window of each history first.
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be in 1..{max_len}, not {stride}")
    positions = (history_lengths - 1).clamp_min(0)  # (U,) inputs that have a target
    counts = (positions + stride - 1) // stride  # (U,) windows per history
    history = torch.repeat_interleave(torch.arange(len(positions)), counts)  # (W,)
    # j-th window from the newest trains inputs [n - (j + 1) S, n - j S), clipped at 0, and reads
    # from up to L inputs before its end
    first_of = torch.cumsum(counts, 0) - counts
    j = torch.arange(len(history)) - first_of[history]
    end = positions[history] - j * stride
    trained_from = (end - stride).clamp_min(0)
    start = (end - max_len).clamp_min(0)
    return history, start, end - start, trained_from - start


class AllPositionsDataLoader(AbstractDataLoader):
    """RecBole training dataloader for ``train_targets: all``: batches of history windows.

    Each batch is an Interaction with RecBole's item list field (B, W) right-padded with 0, its
    length field (B,), the user field (B,), and ``TARGETS`` (B, W): the item that follows each
    input position (0 on padding and on a window's context-only positions, see
    ``train_window_stride``), where W is the longest window of the batch. With BPR,
    ``NEG_TARGETS`` (B, W) holds one uniformly sampled negative per position, never the target.
    Windows are shuffled every epoch with RecBole's seeded generator; ``train_window_batch_size``
    windows make a batch. With ``train_window_positions: P`` batches hold windows of similar
    length instead, up to P padded positions each (see :func:`length_batches`).
    """

    def __init__(self, config, dataset, sampler=None, shuffle=True):
        self.items, offsets, self.users = histories_of(dataset)
        stride = config["train_window_stride"] if self.overlapping_windows else None
        history, start, self.sizes, self.context = cut_windows(offsets[1:] - offsets[:-1],
                                                               config["MAX_ITEM_LIST_LENGTH"], stride)
        self.window_user = self.users[history]  # (W,)
        self.starts = offsets[:-1][history] + start  # (W,) into self.items
        self.sample_size = len(self.sizes)
        self.n_items = dataset.item_num
        self.bpr = config["loss_type"] == "BPR"
        self.seq_field = dataset.item_id_list_field
        self.len_field = dataset.item_list_length_field
        self.uid_field = dataset.uid_field
        super().__init__(config, dataset, sampler, shuffle=shuffle)

    overlapping_windows = True  # reads train_window_stride
    extra_width = 0  # items a batch row holds beyond its window's inputs (cloze: the last target)

    def _init_batch_size_and_step(self):
        self.step = self.config["train_window_batch_size"]
        self.set_batch_size(self.step)

    # -- batches by length (train_window_positions) ------------------------------------------------
    @property
    def position_budget(self) -> int | None:
        return self.config["train_window_positions"]

    def _length_plan(self, generator: torch.Generator | None) -> list[torch.Tensor]:
        widths = self.sizes + self.extra_width
        return length_batches(widths, self.position_budget, generator if self.shuffle else None)

    def __len__(self):
        if not self.position_budget:
            return super().__len__()
        # the batches the next epoch will draw, planned on a copy of the generator (left untouched)
        copy = torch.Generator()
        copy.set_state(self.generator.get_state())
        return len(self._length_plan(copy))

    def __iter__(self):
        if not self.position_budget:
            return super().__iter__()
        return (self.collate_fn(batch) for batch in self._length_plan(self.generator))

    @property
    def n_targets(self) -> int:
        """Targets trained per epoch (the number of prefix samples of the ``last`` regime)."""
        return int((self.sizes - self.context).sum())

    def _window_items(self, index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows ``index`` -> (index (B,), their numbers of inputs n (B,), their items (B, W + 1):
        the n inputs and the target after the last one, right-padded with 0), W = max n."""
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        sizes, starts = self.sizes[index], self.starts[index]  # (B,)
        pos = torch.arange(int(sizes.max()) + 1)
        real = pos.unsqueeze(0) <= sizes.unsqueeze(1)  # (B, W + 1)
        at = (starts.unsqueeze(1) + pos).clamp_max(len(self.items) - 1)  # clipped where not real
        return index, sizes, torch.where(real, self.items[at], 0)

    def collate_fn(self, index):
        index, sizes, items = self._window_items(index)
        pos = torch.arange(items.size(1) - 1).unsqueeze(0)
        real = pos < sizes.unsqueeze(1)  # (B, W) inputs
        trained = real & (pos >= self.context[index].unsqueeze(1))  # inputs whose target this window trains
        targets = torch.where(trained, items[:, 1:], 0)  # the next item of every trained input, else 0
        batch = {self.uid_field: self.window_user[index], self.seq_field: torch.where(real, items[:, :-1], 0),
                 self.len_field: sizes, TARGETS: targets}
        if self.bpr:
            batch[NEG_TARGETS] = torch.where(trained, self._negatives(targets), 0)
        return Interaction(batch)

    def _negatives(self, targets: torch.Tensor) -> torch.Tensor:
        """Uniform items in 1..n_items-1, redrawn where they hit the target (B, W)."""
        neg = torch.randint(1, self.n_items, targets.shape)
        clash = neg == targets
        while clash.any():
            neg[clash] = torch.randint(1, self.n_items, (int(clash.sum()),))
            clash = neg == targets
        return neg


def length_batches(widths: torch.Tensor, budget: int, generator: torch.Generator | None = None,
                   pool_batches: int = 64) -> list[torch.Tensor]:
    """Batches of window indices by length: each batch costs at most ``budget`` padded positions
    (its number of windows times its widest window), or holds a single window wider than that.

    The windows are shuffled (when ``generator`` is given), cut into pools of about
    ``pool_batches`` batches' worth of positions, sorted by width within a pool (widest first) and
    packed greedily; the order of the batches is shuffled again. Every window is in exactly one
    batch. Without ``generator`` the order is fixed: pools in index order, batches in pool order.
    """
    n = len(widths)
    if n == 0:
        return []
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    w = widths[order]
    pool = (torch.cumsum(w, 0) - w) // (pool_batches * budget)  # (n,) pool of each window, in order
    # sort by pool, then widest first (stable, so equal widths keep the shuffled order)
    key = pool * (int(w.max()) + 1) + (int(w.max()) - w)
    rank = torch.sort(key, stable=True).indices
    order, w, pool = order[rank].tolist(), w[rank].tolist(), pool[rank].tolist()
    batches, start = [], 0
    for i in range(1, n + 1):  # close the batch [start, i) before window i if i would overflow it
        if i == n or pool[i] != pool[start] or (i - start + 1) * w[start] > budget:
            batches.append(torch.tensor(order[start:i], dtype=torch.long))
            start = i
    if generator is not None:
        batches = [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


class ClozeDataLoader(AllPositionsDataLoader):
    """RecBole training dataloader for ``train_targets: cloze``: batches of masked history windows.

    The windows of ``AllPositionsDataLoader``, each with its last target appended (n + 1 items for
    n inputs). Every item is replaced by the mask token (``mask_id``, one past the last item id)
    with probability ``mask_ratio``; a window with none masked gets its last item masked.
    ``TARGETS`` (B, W) holds the original item at masked positions and 0 elsewhere; with BPR,
    ``NEG_TARGETS`` one sampled negative there. The masks are drawn anew every epoch from torch's
    seeded generator.
    """

    overlapping_windows = False  # windows never overlap: a masked item would be trained twice
    extra_width = 1  # each window's last target is appended

    def __init__(self, config, dataset, sampler=None, shuffle=True):
        self.mask_ratio = float(config["mask_ratio"])
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self.mask_id = self.n_items

    @property
    def n_targets(self) -> int:
        """Masked items per epoch, expected (the masks are random; at least one per window)."""
        return round(self.mask_ratio * int((self.sizes + 1).sum()))

    def collate_fn(self, index):
        index, sizes, items = self._window_items(index)
        lengths = sizes + 1  # the inputs and the last target
        masked = (items > 0) & (torch.rand(items.shape) < self.mask_ratio)
        none = ~masked.any(1)
        masked[none, lengths[none] - 1] = True
        batch = {self.uid_field: self.window_user[index], self.seq_field: torch.where(masked, self.mask_id, items),
                 self.len_field: lengths, TARGETS: torch.where(masked, items, 0)}
        if self.bpr:
            batch[NEG_TARGETS] = torch.where(masked, self._negatives(items), 0)
        return Interaction(batch)


def prepare_data(config, dataset):
    """RecBole's ``data_preparation``; under ``train_targets: all`` or ``cloze`` the training loader
    yields windows. The evaluation protocol (``eval_filter_seen``) is wired by the caller:
    ``recbole_ssm.checkpoint.load_data``."""
    from recbole.data import data_preparation

    train, valid, test = data_preparation(config, dataset)
    loader = {"all": AllPositionsDataLoader, "cloze": ClozeDataLoader}.get(config["train_targets"] or "last")
    if loader is not None:
        train = loader(config, train._dataset, shuffle=config["shuffle"])
    return train, valid, test
