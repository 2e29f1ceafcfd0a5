"""dataset_engine.gpt: pretrain samples identical to megatron-core's GPTDataset / BlendedDataset
(sample by sample and index by index, for single prefixes, weighted and unweighted blends, several
epochs, every flag), cu_seqlens consistent with the attention mask, an index cache keyed by every
option and by the data itself that detects and rebuilds corrupt entries, concurrent builders,
pickling and DataLoader workers, and the errors for impossible blends.

Every dataset here is a real idxmap written with IdxmapWriter (random document lengths with a long
tail, an EOD id closing each document) and every reference is real megatron-core."""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import hashlib
import json
import multiprocessing
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, _build_document_index
from megatron.core.datasets.utils import get_blend_from_list
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

from dataset_engine.gpt import (BlendedSamples, GPTDataConfig, GPTSamples, build_gpt_datasets,
                                build_gpt_indices, document_index)
from dataset_engine.idxmap import IdxmapReader, IdxmapWriter
from dataset_engine.cache import cache_key

EOD = 1
VOCAB = 1000
PAD = VOCAB - 1  # a pad id; it also occurs (rarely) in the data, where megatron masks it too
SEQ = 32
SPLIT = "90,7,3"
MEGATRON_KEYS = {"tokens", "labels", "attention_mask", "loss_mask", "position_ids"}


# ----------------------------------------------------------------------------- data and builders

def write_idxmap(prefix: str, ndocs: int, seed: int, *, eod: int = EOD, dtype=np.int32,
                 sentences: bool = False) -> str:
    """`ndocs` documents of lognormal lengths (1 .. 400 tokens, mean ~37), each ending in `eod`;
    with `sentences`, some documents are stored as several sequences (--split-sentences)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(3.2, 0.9, ndocs).astype(np.int64), 1, 400)
    with IdxmapWriter(prefix, dtype) as w:
        for n in lengths:
            doc = rng.integers(2, VOCAB, int(n))
            doc[-1] = eod
            if sentences and n >= 6 and rng.random() < 0.4:
                cut = int(rng.integers(1, n))
                w.add_document(doc, [cut, int(n) - cut])
            else:
                w.add_document(doc)
    return prefix


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt-data")
    return {
        "a": write_idxmap(str(d / "a_text_document"), 300, seed=1),
        "b": write_idxmap(str(d / "b_text_document"), 170, seed=2, dtype=np.uint16, sentences=True),
        "tiny": write_idxmap(str(d / "tiny_text_document"), 3, seed=3),
        "dir": d,
    }


def resolve(path, data) -> tuple[str, ...]:
    return tuple(data[p] if p in data else p for p in path)


class Tok:
    """The tokenizer attributes megatron-core's GPT datasets read."""

    def __init__(self, eod: int, pad: int | None = None):
        self.eod, self.vocab_size, self._pad = eod, VOCAB, pad
        self.unique_identifiers = {"class": "Tok", "eod": eod, "pad": pad}

    @property
    def pad(self):
        if self._pad is None:
            raise AttributeError("pad")
        return self._pad


def ours(data_path, sizes, cache_dir, **kw):
    kw.setdefault("seq_length", SEQ)
    kw.setdefault("eod", EOD)
    kw.setdefault("split", SPLIT)
    return build_gpt_datasets(GPTDataConfig(data_path=tuple(data_path), cache_dir=cache_dir, **kw),
                              list(sizes))


def megatron(data_path, sizes, *, seq_length=SEQ, eod=EOD, split=SPLIT, seed=1234, pad=None,
             reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
             create_attention_mask=True, add_extra_token=True,
             drop_last_partial_validation_sequence=True, surplus=0.005):
    """megatron-core's datasets, always built afresh: with path_to_cache=None its GPTDataset still
    caches under {prefix}/cache, keyed without the data or add_extra_token, so that goes first."""
    blend = get_blend_from_list(list(data_path))
    for prefix in blend[0]:
        shutil.rmtree(prefix, ignore_errors=True)
    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=blend, split=split,
        tokenizer=Tok(eod, pad), reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask, eod_mask_loss=eod_mask_loss,
        create_attention_mask=create_attention_mask, add_extra_token_to_sequence=add_extra_token,
        drop_last_partial_validation_sequence=drop_last_partial_validation_sequence,
        path_to_cache=None, mid_level_dataset_surplus=surplus)
    try:
        built = BlendedMegatronDatasetBuilder(GPTDataset, list(sizes), lambda: True, config).build()
    finally:
        for prefix in blend[0]:
            shutil.rmtree(prefix, ignore_errors=True)
    # megatron-core caches the first sample's loss mask *after* zeroing it where that sample's
    # labels are the pad id (an alias, not a copy), so with a pad id that occurs in the data every
    # later sample inherits those zeros. The reference is its per-sample computation, uncached.
    for ds in built:
        for member in getattr(ds, "datasets", [ds]) if ds is not None else []:
            member.masks_and_position_ids_are_cacheable = False
    return built


def parts(datasets):
    """Every GPTSamples and BlendedSamples of a build (blends and their members)."""
    out = []
    for ds in datasets:
        if ds is None:
            continue
        out.append(ds)
        if isinstance(ds, BlendedSamples):
            out.extend(ds.datasets)
    return out


def assert_same_sample(x: dict, y: dict, where: str, cu_seqlens: bool = False) -> None:
    """x (ours) has exactly megatron's keys (plus cu_seqlens when asked) with equal values."""
    assert set(x) == set(y) | ({"cu_seqlens"} if cu_seqlens else set()), where
    for key, want in y.items():
        got = x[key]
        if torch.is_tensor(want):
            assert torch.is_tensor(got) and got.dtype == want.dtype, (where, key, got)
            assert torch.equal(got, want), (where, key)
        else:
            assert int(got) == int(want), (where, key)


def assert_same_indices(a: GPTSamples, b: GPTDataset, where: str) -> None:
    for name in ("document_index", "sample_index", "shuffle_index"):
        assert np.array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name))), (where, name)


def assert_matches_megatron(mine, theirs, *, cu_seqlens=False, sizes=None) -> None:
    assert len(mine) == len(theirs) == 3
    for split, (a, b) in enumerate(zip(mine, theirs)):
        assert (a is None) == (b is None), split
        if a is None:
            continue
        assert len(a) == len(b), (split, len(a), len(b))
        if isinstance(b, BlendedDataset):
            assert isinstance(a, BlendedSamples)
            assert np.array_equal(a.dataset_index, b.dataset_index), split
            assert np.array_equal(a.dataset_sample_index, b.dataset_sample_index), split
            for k, (x, y) in enumerate(zip(a.datasets, b.datasets)):
                assert len(x) == len(y)
                assert_same_indices(x, y, f"split {split} member {k}")
        else:
            assert isinstance(a, GPTSamples)
            assert_same_indices(a, b, f"split {split}")
            if sizes is not None and sizes[split] is not None:
                assert len(a) >= sizes[split]
        for j in range(len(b)):
            assert_same_sample(a[j], b[j], f"split {split} sample {j}", cu_seqlens)


def train_samples_per_epoch(prefix: str, seq_length: int = SEQ, split: str = SPLIT) -> int:
    lengths = IdxmapReader(prefix).sequence_lengths
    config = GPTDataConfig(data_path=(prefix,), seq_length=seq_length, eod=EOD, split=split,
                           cache_dir=None)
    beg, end = config.split_matrix()[0]
    n = len(lengths)
    tokens = int(lengths[int(round(beg * n)):int(round(end * n))].sum())
    return (tokens - 1) // seq_length


# ----------------------------------------------------------------------------- 1. megatron equality

CASES = {
    "single-one-epoch": dict(path=("a",), sizes=[100, 20, 10]),
    "single-epochs-separate-final": dict(path=("a",), sizes=("epochs", 2.3)),
    "single-epochs-joint-final": dict(path=("a",), sizes=("epochs", 2.9)),
    "single-none-sizes": dict(path=("a",), sizes=[None, None, None]),
    "single-sentences-uint16": dict(path=("b",), sizes=[700, 40, 30]),
    "blend-weights": dict(path=("0.3", "a", "0.7", "b"), sizes=[500, 40, 20]),
    "blend-weights-many-epochs": dict(path=("0.3", "a", "0.7", "b"), sizes=[3000, 120, 60]),
    "blend-integer-weights": dict(path=("30", "b", "70", "a"), sizes=[400, 30, 20]),
    "blend-no-weights": dict(path=("a", "b"), sizes=[300, 20, 10]),
    "blend-no-weights-none-sizes": dict(path=("a", "b"), sizes=[None, None, None]),
    "flags-single": dict(path=("a",), sizes=[300, 30, 10],
                         kw=dict(reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True)),
    "flags-blend": dict(path=("0.4", "a", "0.6", "b"), sizes=[300, 30, 10],
                        kw=dict(reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True)),
    "eod-mask-loss-alone": dict(path=("a",), sizes=[100, 20, 10], kw=dict(eod_mask_loss=True)),
    "reset-attention-mask-alone": dict(path=("a",), sizes=[100, 20, 10],
                                       kw=dict(reset_attention_mask=True)),
    "reset-position-ids-alone": dict(path=("a",), sizes=[100, 20, 10], kw=dict(reset_position_ids=True)),
    "no-attention-mask": dict(path=("a",), sizes=[200, 20, 10],
                              kw=dict(create_attention_mask=False, reset_position_ids=True,
                                      reset_attention_mask=True)),
    "no-attention-mask-blend": dict(path=("0.3", "a", "0.7", "b"), sizes=[200, 20, 10],
                                    kw=dict(create_attention_mask=False)),
    "zero-share-single": dict(path=("a",), sizes=[200, 20, 10], split="100,0,0"),
    "zero-share-blend": dict(path=("0.5", "a", "0.5", "b"), sizes=[200, 20, 10], split="98,2,0"),
    "zero-share-middle": dict(path=("a", "b"), sizes=[None, None, None], split="80,0,20"),
    "pad-partial-validation": dict(path=("a",), sizes=[100, None, 10],
                                   kw=dict(pad=PAD, drop_last_partial_validation_sequence=False)),
    "pad-equals-eod": dict(path=("a",), sizes=[100, None, 10],
                           kw=dict(pad=EOD, drop_last_partial_validation_sequence=False)),
    "no-extra-token-pad": dict(path=("a",), sizes=[400, 20, 10],
                               kw=dict(pad=PAD, add_extra_token=False,
                                       drop_last_partial_validation_sequence=False)),
    "no-extra-token-no-pad": dict(path=("0.3", "a", "0.7", "b"), sizes=[400, 20, 10],
                                  kw=dict(add_extra_token=False, eod_mask_loss=True)),
    "seed-and-odd-seq-length": dict(path=("a",), sizes=[250, 20, 10], kw=dict(seed=7, seq_length=57)),
    "long-seq-length": dict(path=("0.5", "a", "0.5", "b"), sizes=[60, 8, 4], kw=dict(seq_length=512)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_samples_match_megatron(case, data, tmp_path):
    spec = CASES[case]
    path = resolve(spec["path"], data)
    kw = dict(spec.get("kw", {}))
    split = spec.get("split", SPLIT)
    sizes = spec["sizes"]
    if sizes[0] == "epochs":  # train reaches into a third epoch; final epoch short or not
        per_epoch = train_samples_per_epoch(path[0])
        sizes = [int(sizes[1] * per_epoch), 20, 10]
    mine = ours(path, sizes, str(tmp_path / "cache"), split=split, **kw)
    theirs = megatron(path, sizes, split=split, **kw)
    assert_matches_megatron(mine, theirs, cu_seqlens=kw.get("reset_attention_mask", False),
                            sizes=sizes)
    if case.startswith("single-epochs"):  # the case really is what its name says
        train = mine[0]
        documents = np.unique(train.document_index)
        assert len(train.document_index) == 3 * len(documents)  # three epochs
        per_epoch_tokens = int(IdxmapReader(path[0]).sequence_lengths[documents].sum())
        sans_final = (2 * per_epoch_tokens - 1) // SEQ
        head = np.asarray(train.shuffle_index[:sans_final])
        separate = bool(head.max() < sans_final)
        assert separate == (case == "single-epochs-separate-final")
    if case.startswith("zero-share"):
        shares = [float(s) for s in split.split(",")]
        assert [d is None for d in mine] == [s == 0 for s in shares]


@pytest.mark.parametrize("separate_final_epoch", [False, True])
@pytest.mark.parametrize("num_epochs", [1, 2, 3, 7])
@pytest.mark.parametrize("beg,end", [(0, 1), (0, 270), (270, 291), (5, 1000)])
def test_document_index_matches_megatron(separate_final_epoch, num_epochs, beg, end):
    documents = np.arange(beg, end, dtype=np.int32)
    seed = 1000 * num_epochs + beg
    mine_rng, their_rng = np.random.RandomState(seed), np.random.RandomState(seed)
    mine = document_index(documents, num_epochs, mine_rng, separate_final_epoch)
    theirs = _build_document_index(documents, num_epochs, their_rng, separate_final_epoch)
    assert mine.dtype == theirs.dtype == np.int32
    assert np.array_equal(mine, theirs)
    # The generator is left in the same state: the shuffle index drawn next is the same too.
    assert np.array_equal(mine_rng.randint(0, 2**31, 8), their_rng.randint(0, 2**31, 8))
    assert np.array_equal(np.sort(mine), np.sort(np.tile(documents, num_epochs)))


def test_build_gpt_indices_matches_megatron_arrays(data):
    """The free function alone (no cache) gives megatron's three arrays, for each split."""
    sizes = [2 * train_samples_per_epoch(data["a"]) + 5, 20, None]
    theirs = megatron((data["a"],), sizes)
    lengths = IdxmapReader(data["a"]).sequence_lengths
    config = GPTDataConfig(data_path=(data["a"],), seq_length=SEQ, eod=EOD, split=SPLIT, cache_dir=None)
    n = len(lengths)
    for i, (lo, hi) in enumerate(config.split_matrix()):
        arrays = build_gpt_indices(lengths, int(round(lo * n)), int(round(hi * n)), sizes[i],
                                   seq_length=SEQ, seed=1234, add_extra_token=True,
                                   drop_last_partial=True)
        for name, array in arrays.items():
            assert np.array_equal(array, getattr(theirs[i], name)), (i, name)


# ----------------------------------------------------------------------------- 2. cu_seqlens

def check_cu_seqlens(sample: dict, raw: np.ndarray, seq_length: int, eod: int) -> None:
    """cu_seqlens cuts right after every EOD of the sample's input tokens (raw ids, before pads
    become 0) and nowhere else; the attention mask and reset positions agree with those cuts."""
    cu = sample["cu_seqlens"]
    assert cu.dtype == torch.int32
    cu = cu.tolist()
    assert cu[0] == 0 and cu[-1] == seq_length
    assert all(x < y for x, y in zip(cu, cu[1:])), cu
    ends = [i + 1 for i, t in enumerate(raw[:seq_length].tolist()) if t == eod and i + 1 < seq_length]
    assert cu[1:-1] == ends, (cu, raw.tolist())
    segment = np.searchsorted(np.array(cu), np.arange(seq_length), side="right") - 1
    if "attention_mask" in sample:
        mask = sample["attention_mask"]
        assert mask.shape == (1, seq_length, seq_length) and mask.dtype == torch.bool
        rows, cols = np.indices((seq_length, seq_length))
        attends = (segment[rows] == segment[cols]) & (cols <= rows)
        assert torch.equal(mask[0], torch.from_numpy(~attends)), cu  # True = blocked
    starts = np.array(cu)[segment]
    assert torch.equal(sample["position_ids"], torch.from_numpy(np.arange(seq_length) - starts))


@pytest.mark.parametrize("create_attention_mask", [True, False])
def test_cu_seqlens_follow_documents(create_attention_mask, data, tmp_path):
    mine = ours((data["a"],), [300, None, None], str(tmp_path / "cache"), reset_attention_mask=True,
                reset_position_ids=True, create_attention_mask=create_attention_mask, pad=PAD,
                drop_last_partial_validation_sequence=False)
    boundaries = 0
    for ds in mine:
        for i in range(len(ds)):
            sample = ds[i]
            assert ("attention_mask" in sample) == create_attention_mask
            check_cu_seqlens(sample, ds.text(i), SEQ, EOD)
            boundaries += len(sample["cu_seqlens"]) - 2
    assert boundaries > 300  # documents really are packed across samples


def test_pad_masks_exactly_its_own_positions(data, tmp_path):
    """Labels equal to the pad id (padding, or the id occurring in the data) lose their loss and
    become 0, in that sample only (megatron-core's cached mask leaks them into later samples)."""
    for ds in ours((data["a"],), [300, None, None], str(tmp_path / "cache"), pad=PAD,
                   drop_last_partial_validation_sequence=False)[:2]:
        masked = 0
        for i in range(len(ds)):
            raw, sample = ds.text(i), ds[i]
            labels = torch.from_numpy(raw[1:SEQ + 1])
            assert torch.equal(sample["loss_mask"] == 0, labels == PAD), i
            assert torch.equal(sample["labels"], torch.where(labels == PAD, 0, labels)), i
            masked += int((labels == PAD).sum())
        assert masked > 0


def test_cu_seqlens_without_reset_attention_mask_absent(data, tmp_path):
    ds = ours((data["a"],), [50, 5, 5], str(tmp_path / "cache"), reset_position_ids=True)[0]
    assert "cu_seqlens" not in ds[0]


def test_cu_seqlens_ignore_padding_when_eod_is_zero(tmp_path):
    """GPT-NeoX-style tokenizers have eod id 0; the padded final validation sample's pads become
    token 0 in `tokens`, yet they are padding, not documents: the attention mask (megatron's)
    keeps the pad run as one block, and cu_seqlens must agree with it."""
    prefix = write_idxmap(str(tmp_path / "neox_text_document"), 120, seed=11, eod=0)
    kw = dict(eod=0, pad=PAD, split="50,50,0", reset_attention_mask=True, reset_position_ids=True,
              drop_last_partial_validation_sequence=False)
    mine = ours((prefix,), [None, None, None], str(tmp_path / "cache"), **kw)
    assert_matches_megatron(mine, megatron((prefix,), [None, None, None], **kw), cu_seqlens=True)
    valid = mine[1]
    padded = [i for i in range(len(valid)) if (valid.text(i)[-3:] == PAD).all()]
    assert padded, "the last validation sample should be padded"
    for i in range(len(valid)):
        check_cu_seqlens(valid[i], valid.text(i), SEQ, 0)


# ----------------------------------------------------------------------------- 3. index cache

def cache_entries(cache_dir) -> set[str]:
    """Entry directories of a cache. Anything else there must be an entry's .lock file or the
    library's ``digests/`` memo of .idx digests (no temporary or moved-aside directories)."""
    names = set(os.listdir(cache_dir)) - {"digests"}
    dirs = {n for n in names if os.path.isdir(os.path.join(cache_dir, n))}
    others = names - dirs
    assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in dirs), dirs
    assert all(n.endswith(".lock") for n in others), others
    assert {n.removesuffix(".lock") for n in others} == dirs, (others, dirs)
    return dirs


def assert_same_samples(x, y) -> None:
    assert len(x) == len(y)
    for a, b in zip(x, y):
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert len(a) == len(b)
        for j in range(len(a)):
            sa, sb = a[j], b[j]
            assert sa.keys() == sb.keys()
            for key in sa:
                assert (torch.equal(sa[key], sb[key]) if torch.is_tensor(sa[key])
                        else sa[key] == sb[key]), (j, key)


@pytest.mark.parametrize("path,expected", [(("a",), 3), (("0.3", "a", "0.7", "b"), 9), (("a", "b"), 9)],
                         ids=["single", "blend-weights", "blend-no-weights"])
def test_cache_one_entry_per_dataset_then_hits(path, expected, data, tmp_path):
    cache = str(tmp_path / "cache")
    path = resolve(path, data)
    sizes = [300, 30, 20] if len(path) != 2 else [None, None, None]
    first = ours(path, sizes, cache)
    assert all(not p.cache_hit for p in parts(first))
    entries = cache_entries(cache)
    assert len(entries) == expected
    assert {cache_key(p.description) for p in parts(first) if isinstance(p, GPTSamples)} <= entries
    second = ours(path, sizes, cache)
    assert all(p.cache_hit for p in parts(second))
    assert cache_entries(cache) == entries
    assert_same_samples(first, second)
    assert_matches_megatron(second, megatron(path, sizes))
    for entry in entries:  # plain arrays: loadable without pickle, no object dtype
        files = sorted(os.listdir(os.path.join(cache, entry)))
        assert "description.json" in files
        json.loads(open(os.path.join(cache, entry, "description.json"), encoding="utf-8").read())
        npys = [f for f in files if f.endswith(".npy")]
        assert npys and len(npys) + 1 == len(files)
        for f in npys:
            array = np.load(os.path.join(cache, entry, f), allow_pickle=False)
            assert array.dtype.kind in "iu", (entry, f, array.dtype)


BASE_BLEND = ("0.3", "a", "0.7", "b")
BASE_SIZES = [300, 30, 20]
OPTION_CHANGES = {  # name: (options, sizes or None for BASE_SIZES, changes the indices)
    "seq_length": (dict(seq_length=48), None, True),
    "seed": (dict(seed=4321), None, True),
    "split": (dict(split="80,15,5"), None, True),
    "num_samples": ({}, [360, 30, 20], True),
    "add_extra_token": (dict(add_extra_token=False), None, True),
    "drop_last_partial_validation": (dict(drop_last_partial_validation_sequence=False), None, True),
    "surplus": (dict(surplus=0.05), None, True),
    "weights": ({"path": ("0.6", "a", "0.4", "b")}, None, True),
    "mask-flags": (dict(reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True,
                        create_attention_mask=False), None, False),
    "pad": (dict(pad=PAD), None, False),
}


@pytest.mark.parametrize("change", list(OPTION_CHANGES), ids=list(OPTION_CHANGES))
def test_cache_key_covers_options(change, data, tmp_path):
    cache = str(tmp_path / "cache")
    ours(resolve(BASE_BLEND, data), BASE_SIZES, cache)
    before = cache_entries(cache)
    options, sizes, changes = OPTION_CHANGES[change]
    options = dict(options)
    path = resolve(options.pop("path", BASE_BLEND), data)
    sizes = sizes or BASE_SIZES
    mine = ours(path, sizes, cache, **options)
    after = cache_entries(cache)
    misses = [p for p in parts(mine) if not p.cache_hit]
    if changes:
        assert misses, "a changed option was served from the old entries"
        assert before < after and len(after - before) == len(misses)
        for p in misses:
            if isinstance(p, GPTSamples):
                assert cache_key(p.description) in after - before
    else:
        assert not misses and after == before
    assert_matches_megatron(mine, megatron(path, sizes, **options),
                            cu_seqlens=options.get("reset_attention_mask", False))


def rewrite(prefix: str, ndocs: int, seed: int) -> None:
    write_idxmap(prefix, ndocs, seed=seed)


def test_rewritten_idxmap_is_a_new_entry(tmp_path):
    prefix = write_idxmap(str(tmp_path / "data_text_document"), 260, seed=21)
    cache = str(tmp_path / "cache")
    sizes = [400, 20, 10]
    first = ours((prefix,), sizes, cache)
    old_entries = cache_entries(cache)
    old_lengths = IdxmapReader(prefix).sequence_lengths.copy()
    rewrite(prefix, 230, seed=22)  # regenerated: other documents, other lengths
    assert not np.array_equal(IdxmapReader(prefix).sequence_lengths[:230], old_lengths[:230])
    second = ours((prefix,), sizes, cache)
    assert all(not p.cache_hit for p in parts(second))
    new_entries = cache_entries(cache)
    assert old_entries < new_entries and len(new_entries - old_entries) == 3
    assert [p.description["idx"]["digest"] for p in parts(first)] != \
        [p.description["idx"]["digest"] for p in parts(second)]
    assert_matches_megatron(second, megatron((prefix,), sizes), sizes=sizes)


def copy_preserving_mtime(src_prefix: str, dst_prefix: str) -> None:
    """What `cp -p src dst` does to an existing dst: rewrite it in place (same inode), then give
    it the source's mtime."""
    for ext in (".idx", ".bin"):
        src, dst = src_prefix + ext, dst_prefix + ext
        with open(src, "rb") as f, open(dst, "r+b") as g:
            g.truncate(0)
            g.write(f.read())
        st = os.stat(src)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_rewritten_idxmap_same_size_inode_and_mtime_is_a_new_entry(tmp_path):
    """Data regenerated with as many documents (an .idx of the same size), copied over the old
    files with `cp -p` (same inode) and the same mtime as the old ones had: new data, new key."""
    prefix = write_idxmap(str(tmp_path / "data_text_document"), 260, seed=31)
    stamp = os.stat(prefix + ".idx")
    cache = str(tmp_path / "cache")
    sizes = [400, 20, 10]
    first = ours((prefix,), sizes, cache)
    old_bytes = open(prefix + ".idx", "rb").read()
    regenerated = write_idxmap(str(tmp_path / "new_text_document"), 260, seed=32)
    os.utime(regenerated + ".idx", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    copy_preserving_mtime(regenerated, prefix)
    st = os.stat(prefix + ".idx")
    assert (st.st_size, st.st_ino, st.st_mtime_ns) == (stamp.st_size, stamp.st_ino, stamp.st_mtime_ns)
    assert open(prefix + ".idx", "rb").read() != old_bytes
    second = ours((prefix,), sizes, cache)
    assert [p.description["idx"]["digest"] for p in parts(second)] != \
        [p.description["idx"]["digest"] for p in parts(first)], "the old digest names new data"
    assert all(not p.cache_hit for p in parts(second)), "stale indices served for new data"
    assert_matches_megatron(second, megatron((prefix,), sizes), sizes=sizes)


def _edit_description(entry, edit):
    path = os.path.join(entry, "description.json")
    stored = json.load(open(path, encoding="utf-8"))
    edit(stored)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stored, f)


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


CORRUPTIONS = {
    "truncated-npy": lambda e: os.truncate(os.path.join(e, "sample_index.npy"),
                                           os.path.getsize(os.path.join(e, "sample_index.npy")) // 2),
    "empty-npy": lambda e: os.truncate(os.path.join(e, "document_index.npy"), 0),
    "missing-npy": lambda e: os.remove(os.path.join(e, "shuffle_index.npy")),
    "wrong-shape-npy": lambda e: np.save(os.path.join(e, "shuffle_index.npy"),
                                         np.load(os.path.join(e, "shuffle_index.npy"))[:-1]),
    "pickled-npy": lambda e: np.save(os.path.join(e, "document_index.npy"),
                                     np.array([{"x": 1}] * 3, dtype=object), allow_pickle=True),
    "description-field-edited": lambda e: _edit_description(
        e, lambda d: d["description"].__setitem__("seq_length", SEQ + 1)),
    "description-invalid-json": lambda e: _write(os.path.join(e, "description.json"), "{\"descr"),
    "description-missing": lambda e: os.remove(os.path.join(e, "description.json")),
    "description-drops-an-array": lambda e: _edit_description(
        e, lambda d: d["arrays"].pop("shuffle_index")),
    "description-not-an-object": lambda e: _write(os.path.join(e, "description.json"), "[]"),
    "foreign-empty-directory": lambda e: (shutil.rmtree(e), os.mkdir(e)),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_corrupt_entry_is_moved_aside_and_rebuilt(kind, data, tmp_path):
    cache = str(tmp_path / "cache")
    sizes = [300, 30, 20]
    first = ours((data["a"],), sizes, cache)
    entries = cache_entries(cache)
    entry = os.path.join(cache, cache_key(first[0].description))
    # Samples read now: `first` maps the entry's files, which the corruption rewrites.
    expected = [[ds[i] for i in range(len(ds))] for ds in first]
    del first
    CORRUPTIONS[kind](entry)
    second = ours((data["a"],), sizes, cache)
    assert [p.cache_hit for p in second] == [False, True, True]
    assert cache_entries(cache) == entries  # rebuilt in place, nothing left aside
    for f in os.listdir(entry):
        if f.endswith(".npy"):
            np.load(os.path.join(entry, f), allow_pickle=False)
    third = ours((data["a"],), sizes, cache)
    assert all(p.cache_hit for p in third)
    assert_same_samples(expected, second)
    assert_matches_megatron(third, megatron((data["a"],), sizes), sizes=sizes)


# ----------------------------------------------------------------------------- 4. concurrent builders

def sample_checksums(datasets, n: int = 50) -> list[str | None]:
    out = []
    for ds in datasets:
        if ds is None:
            out.append(None)
            continue
        h = hashlib.sha256()
        for i in range(min(n, len(ds))):
            h.update(ds[i]["tokens"].numpy().tobytes())
        h.update(str(len(ds)).encode())
        out.append(h.hexdigest())
    return out


def _concurrent_build(cache_dir, data_path, sizes, barrier, queue) -> None:
    try:
        barrier.wait(timeout=120)
        built = ours(data_path, sizes, cache_dir)
        queue.put(("ok", os.getpid(), sample_checksums(built), [p.cache_hit for p in parts(built)]))
    except BaseException as e:  # reported to the parent, which fails the test
        queue.put(("error", os.getpid(), repr(e), None))


@pytest.mark.slow
def test_concurrent_builders_share_one_entry_per_key(data, tmp_path):
    cache = str(tmp_path / "cache")
    path = resolve(("0.3", "a", "0.7", "b"), data)
    sizes = [5000, 200, 100]
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_build, args=(cache, path, sizes, barrier, queue))
             for _ in range(4)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(r[0] == "ok" for r in results), results
    assert all(p.exitcode == 0 for p in procs)
    entries = cache_entries(cache)
    assert len(entries) == 9
    reference = sample_checksums(ours(path, sizes, None))
    assert all(r[2] == reference for r in results)
    # Each entry was built once (the others waited on its lock and loaded it).
    hits = np.array([r[3] for r in results])
    assert hits.shape == (4, 9)
    assert ((~hits).sum(axis=0) == 1).all(), hits
    again = ours(path, sizes, cache)
    assert all(p.cache_hit for p in parts(again))
    assert sample_checksums(again) == reference


# ----------------------------------------------------------------------------- 5. pickling, DataLoader

@pytest.mark.parametrize("path", [("a",), ("0.3", "a", "0.7", "b")], ids=["single", "blend"])
def test_pickle_roundtrip(path, data, tmp_path):
    built = ours(resolve(path, data), [300, 30, 20], str(tmp_path / "cache"),
                 reset_attention_mask=True)
    copies = [pickle.loads(pickle.dumps(ds)) for ds in built]
    assert [type(c) for c in copies] == [type(d) for d in built]
    assert_same_samples(built, copies)
    blob = pickle.dumps(built[0])
    assert len(blob) < 200_000  # the token data is reopened, not carried along


@pytest.mark.parametrize("path,context", [(("a",), None), (("0.3", "a", "0.7", "b"), "spawn")],
                         ids=["single-fork", "blend-spawn"])
@pytest.mark.slow
def test_dataloader_workers_match_in_process(path, context, data, tmp_path):
    train = ours(resolve(path, data), [203, 30, 20], str(tmp_path / "cache"),
                 reset_position_ids=True)[0]
    loader = DataLoader(train, batch_size=4, num_workers=2, multiprocessing_context=context)
    batches = list(loader)
    expected = [default_collate([train[j] for j in range(i, min(i + 4, len(train)))])
                for i in range(0, len(train), 4)]
    assert len(batches) == len(expected) == -(-len(train) // 4)
    for k, (got, want) in enumerate(zip(batches, expected)):
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), (k, key)


# ----------------------------------------------------------------------------- 6. errors

def test_blend_needing_more_than_a_tiny_dataset_has(data, tmp_path):
    with pytest.raises(ValueError, match=re.escape(data["tiny"])):
        ours(("0.5", data["a"], "0.5", data["tiny"]), [200, 20, 10], str(tmp_path / "cache"))
    assert not any(n.endswith(".tmp") or ".tmp-" in n for n in os.listdir(tmp_path / "cache"))


@pytest.mark.parametrize("weights", [("-0.3", "1.3"), ("0", "1"), ("0.5", "-0.5")])
def test_bad_weights(weights, data):
    with pytest.raises(ValueError, match="weight"):
        GPTDataConfig(data_path=(weights[0], data["a"], weights[1], data["b"]), seq_length=SEQ,
                      eod=EOD, cache_dir=None)


def test_weighted_blend_needs_sizes(data):
    with pytest.raises(ValueError):
        ours(resolve(("0.3", "a", "0.7", "b"), data), [100, None, 10], None)
    with pytest.raises(ValueError):
        ours((data["a"],), [100, 10], None)
    with pytest.raises(ValueError):
        GPTDataConfig(data_path=(data["a"],), seq_length=0, eod=EOD, cache_dir=None)


# -- dataprep build-index ------------------------------------------------------------------------
@pytest.mark.slow
def test_build_index_command_builds_what_training_loads(data, tmp_path):
    """The command builds every index ahead of training; a run then finds them all cached, with
    Megatron's sample counts from iterations, batch size and evaluation settings."""
    from conftest import run_cli

    from dataset_engine.gpt import megatron_num_samples

    cache = tmp_path / "cache"
    args = ["build-index", "--data-path", "0.3", data["a"], "0.7", data["b"], "--split", SPLIT,
            "--seq-length", SEQ, "--train-iters", 20, "--global-batch-size", 4, "--eval-interval", 10,
            "--eval-iters", 2, "--cache-dir", cache]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "Transformer Engine" not in first.stderr
    samples = megatron_num_samples(20, 4, 10, 2)
    assert samples == [80, 24, 8]
    assert f"samples [train, valid, test] = {samples}" in first.stdout
    assert re.search(r"train .* 3 index\(es\) built, 0 already cached", first.stdout), first.stdout
    again = run_cli(*args)
    assert re.search(r"train .* 0 index\(es\) built, 3 already cached", again.stdout), again.stdout
    datasets = ours(("0.3", data["a"], "0.7", data["b"]), samples, str(cache))
    for blend in datasets:
        assert blend.cache_hit and all(part.cache_hit for part in blend.datasets)
    missing = run_cli("build-index", "--data-path", tmp_path / "nope_text_document", "--seq-length", SEQ,
                      "--train-samples", 10, "--cache-dir", cache)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "missing" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_collate_gives_batch_level_document_boundaries(data, tmp_path):
    """reset_attention_mask samples carry cu_seqlens of different lengths: the one collate function
    batches them (THD boundaries over the flattened batch) in a DataLoader with workers."""
    from dataset_engine.batch import collate

    train = ours([data["a"]], [40, 4, 2], str(tmp_path / "c"), reset_attention_mask=True, reset_position_ids=True,
                 create_attention_mask=False)[0]
    rows = [train[i] for i in range(4)]
    assert len({len(r["cu_seqlens"]) for r in rows}) > 1  # a stack would fail
    batch = next(iter(DataLoader(train, batch_size=4, num_workers=2, collate_fn=collate)))
    assert batch["tokens"].shape == (4, SEQ)
    expected = [0] + [int(c) + b * SEQ for b, r in enumerate(rows) for c in r["cu_seqlens"][1:]]
    assert batch["cu_seqlens"].tolist() == expected
    assert batch["max_seqlen"] == max(int(torch.diff(r["cu_seqlens"]).max()) for r in rows)
    for b, r in enumerate(rows):  # positions restart exactly at the boundaries
        starts = [int(c) for c in r["cu_seqlens"][:-1]]
        assert [int(batch["position_ids"][b, s]) for s in starts] == [0] * len(starts)
