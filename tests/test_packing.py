"""Packing plans: every record in exactly one row, no row over seq_len, BFD equal to a plain
reference implementation, deterministic rows, next-fit in file order, near-optimal row counts."""

import subprocess
import sys

import numpy as np
import pytest

from dataset_engine.packing import PackingPlan, pack_best_fit_decreasing, pack_next_fit

PACKERS = [pack_best_fit_decreasing, pack_next_fit]


def reference_best_fit_decreasing(lengths, seq_len):
    """Textbook BFD, O(n * rows), with the tie-breaks documented in dataprep/packing.py: records
    by length descending, equal lengths by ascending index; each goes to the open row with the
    least room that fits it, the first-opened among equals; else it opens a new row."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        best = None
        for r in range(len(rows)):
            if lengths[i] <= room[r] and (best is None or room[r] < room[best]):
                best = r
        if best is None:
            rows.append([])
            room.append(seq_len)
            best = len(rows) - 1
        rows[best].append(i)
        room[best] -= lengths[i]
    return rows


def reference_next_fit(lengths, seq_len):
    rows, used = [], seq_len + 1
    for i, length in enumerate(lengths):
        if used + length > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += length
    return rows


def rows_of(plan):
    return [plan.row(r).tolist() for r in range(plan.rows)]


def check_plan(plan, lengths, seq_len):
    """The guarantees every plan gives, checked independently of PackingPlan's own checks."""
    lengths = np.asarray(lengths, dtype=np.int64)
    assert plan.seq_len == seq_len
    np.testing.assert_array_equal(plan.lengths, lengths)
    seen = np.concatenate([plan.row(r) for r in range(plan.rows)]) if plan.rows else np.zeros(0)
    assert sorted(seen.tolist()) == list(range(len(lengths)))  # every record exactly once
    row_lengths = plan.row_lengths()
    assert row_lengths.tolist() == [int(lengths[plan.row(r)].sum()) for r in range(plan.rows)]
    assert (row_lengths <= seq_len).all() and (row_lengths > 0).all()
    for r in range(plan.rows):  # records in a row by ascending index
        assert (np.diff(plan.row(r)) > 0).all()
    assert plan.tokens == int(lengths.sum())
    assert plan.lower_bound == -(-int(lengths.sum()) // seq_len)
    assert plan.rows >= plan.lower_bound
    if plan.rows:
        assert plan.efficiency == pytest.approx(plan.tokens / (plan.rows * seq_len))


def random_case(rng):
    seq_len = int(rng.integers(1, 60))
    n = int(rng.integers(0, 50))
    kind = rng.integers(3)
    if kind == 0:  # anything up to seq_len
        lengths = rng.integers(1, seq_len + 1, n)
    elif kind == 1:  # few distinct values: many ties between records and between rows
        lengths = rng.choice(np.unique(rng.integers(1, seq_len + 1, 3)), n)
    else:  # mostly short with some long
        lengths = np.where(rng.random(n) < 0.8, rng.integers(1, seq_len // 4 + 2, n),
                           rng.integers(seq_len // 2 + 1, seq_len + 1, n))
    return np.minimum(lengths, seq_len).tolist(), seq_len


def sft_lengths(rng, n, seq_len):
    """Alpaca-like: lognormal with median 250 tokens (mean ~370), clipped to [16, seq_len]."""
    return np.clip(np.rint(rng.lognormal(np.log(250), 0.9, n)), 16, seq_len).astype(np.int64)


def short_and_long_lengths(rng, n, seq_len):
    """95% short chat turns (20-300 tokens), 5% long documents (half to all of seq_len)."""
    return np.where(rng.random(n) < 0.95, rng.integers(20, 301, n),
                    rng.integers(seq_len // 2, seq_len + 1, n))


def test_best_fit_decreasing_equals_the_reference_on_small_random_cases():
    rng = np.random.default_rng(1234)
    for case in range(400):
        lengths, seq_len = random_case(rng)
        plan = pack_best_fit_decreasing(lengths, seq_len, seed=case)
        check_plan(plan, lengths, seq_len)
        expected = reference_best_fit_decreasing(lengths, seq_len)
        assert plan.rows == len(expected), (lengths, seq_len)
        assert sorted(rows_of(plan)) == sorted(sorted(row) for row in expected), (lengths, seq_len)


def test_best_fit_decreasing_equals_the_reference_on_a_larger_sft_mix():
    rng = np.random.default_rng(7)
    lengths = sft_lengths(rng, 3000, 2048).tolist()
    plan = pack_best_fit_decreasing(lengths, 2048)
    expected = reference_best_fit_decreasing(lengths, 2048)
    assert sorted(rows_of(plan)) == sorted(sorted(row) for row in expected)


def test_next_fit_equals_the_reference_and_keeps_file_order():
    rng = np.random.default_rng(99)
    for _ in range(300):
        lengths, seq_len = random_case(rng)
        plan = pack_next_fit(lengths, seq_len)
        check_plan(plan, lengths, seq_len)
        assert rows_of(plan) == reference_next_fit(lengths, seq_len)
        np.testing.assert_array_equal(plan.order, np.arange(len(lengths)))


def test_next_fit_starts_a_row_only_when_the_next_record_does_not_fit():
    lengths = [3, 4, 2, 5, 1, 1, 6]
    plan = pack_next_fit(lengths, 8)
    assert rows_of(plan) == [[0, 1], [2, 3, 4], [5, 6]]
    assert pack_best_fit_decreasing(lengths, 8).rows == 3  # 28 tokens: 3 rows is optimal


def test_rows_are_deterministic_and_the_seed_only_orders_them():
    lengths = sft_lengths(np.random.default_rng(0), 5000, 4096)
    a = pack_best_fit_decreasing(lengths, 4096, seed=3)
    b = pack_best_fit_decreasing(lengths, 4096, seed=3)
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.row_offsets, b.row_offsets)
    c = pack_best_fit_decreasing(lengths.copy(), 4096, seed=4)
    assert sorted(rows_of(a)) == sorted(rows_of(c))  # the same rows...
    assert rows_of(a) != rows_of(c)  # ...in another order


def test_input_types_give_the_same_plan():
    lengths = [5, 3, 8, 1, 7, 2]
    expected = rows_of(pack_best_fit_decreasing(lengths, 8))
    for variant in (np.array(lengths, np.int32), np.array(lengths, np.uint16), tuple(lengths),
                    np.array(lengths, dtype=object)):
        assert rows_of(pack_best_fit_decreasing(variant, 8)) == expected
    assert rows_of(pack_best_fit_decreasing(lengths, np.int64(8))) == expected


@pytest.mark.parametrize("pack", PACKERS)
@pytest.mark.parametrize("lengths, message", [
    ([10, 4097, 3], "record 1 has length 4097: > seq_len 4096"),
    ([10, 20, 0, 5], "record 2 has length 0: lengths must be >= 1"),
    ([-3, 20], "record 0 has length -3: lengths must be >= 1"),
    ([5000, 1, 9000],
     r"record 0 has length 5000: > seq_len 4096; truncate or drop it before packing \(1 more"),
])
def test_bad_lengths_are_refused_naming_the_record(pack, lengths, message):
    with pytest.raises(ValueError, match=message):
        pack(lengths, 4096)


@pytest.mark.parametrize("pack", PACKERS)
def test_bad_arguments_are_refused_naming_the_value(pack):
    with pytest.raises(TypeError, match="dtype float64"):
        pack([1.0, 2.5], 8)
    with pytest.raises(TypeError, match="dtype <U"):
        pack([1, "x"], 8)
    with pytest.raises(TypeError, match="record 1 has length None"):
        pack([1, None], 8)
    with pytest.raises(ValueError, match=r"1-D, got shape \(2, 2\)"):
        pack([[1, 2], [3, 4]], 8)
    with pytest.raises(ValueError, match="seq_len must be >= 1, got 0"):
        pack([1], 0)
    with pytest.raises(TypeError, match="seq_len must be an integer, got 8.0"):
        pack([1], 8.0)
    with pytest.raises(TypeError, match="seq_len must be an integer, got True"):
        pack([1], True)


def test_bad_seed_is_refused():
    with pytest.raises(TypeError, match="seed must be an integer, got 'abc'"):
        pack_best_fit_decreasing([1, 2], 8, seed="abc")


@pytest.mark.parametrize("pack", PACKERS)
def test_empty_input_gives_no_rows(pack):
    plan = pack([], 4096)
    assert (plan.rows, plan.tokens, plan.lower_bound, plan.efficiency) == (0, 0, 0, 0.0)
    assert plan.row_lengths().size == 0 and plan.order.size == 0
    with pytest.raises(IndexError, match="row 0 out of range for a plan with 0 rows"):
        plan.row(0)


@pytest.mark.parametrize("pack", PACKERS)
def test_one_record(pack):
    plan = pack([17], 4096)
    assert rows_of(plan) == [[0]]
    assert plan.row_lengths().tolist() == [17]
    assert plan.efficiency == pytest.approx(17 / 4096)


@pytest.mark.parametrize("pack", PACKERS)
def test_records_of_exactly_seq_len_get_a_row_each(pack):
    plan = pack([64] * 10, 64)
    check_plan(plan, [64] * 10, 64)
    assert plan.rows == 10 and plan.efficiency == 1.0
    assert sorted(rows_of(plan)) == [[i] for i in range(10)]


@pytest.mark.parametrize("make_lengths", [sft_lengths, short_and_long_lengths])
@pytest.mark.parametrize("seq_len", [4096, 2048])
def test_best_fit_decreasing_is_within_one_percent_of_the_lower_bound(make_lengths, seq_len):
    lengths = make_lengths(np.random.default_rng(seq_len), 100_000, seq_len)
    bfd = pack_best_fit_decreasing(lengths, seq_len)
    nf = pack_next_fit(lengths, seq_len)
    check_plan_fast(bfd, lengths, seq_len)
    check_plan_fast(nf, lengths, seq_len)
    assert bfd.rows <= 1.01 * bfd.lower_bound, (bfd.rows, bfd.lower_bound)
    assert bfd.rows < nf.rows
    assert bfd.efficiency > 0.99 > nf.efficiency


def check_plan_fast(plan, lengths, seq_len):
    """check_plan's guarantees with numpy, for large plans."""
    assert np.array_equal(np.sort(plan.order), np.arange(len(lengths)))
    row_lengths = plan.row_lengths()
    assert row_lengths.max() <= seq_len and row_lengths.sum() == lengths.sum()


def test_plan_arrays_are_read_only_and_invalid_plans_are_refused():
    plan = pack_best_fit_decreasing([3, 5, 2], 8)
    with pytest.raises(ValueError):
        plan.order[0] = 1
    ok = {"seq_len": 8, "row_offsets": [0, 2, 3], "order": [0, 1, 2], "lengths": [3, 5, 2]}
    assert PackingPlan(**ok).rows == 2
    with pytest.raises(ValueError, match="row 0 holds 11 tokens > seq_len 8"):
        PackingPlan(**dict(ok, lengths=[3, 8, 2]))
    with pytest.raises(ValueError, match="each of the 3 record indices exactly once"):
        PackingPlan(**dict(ok, order=[0, 0, 2]))
    with pytest.raises(ValueError, match="row 1 is empty"):
        PackingPlan(**dict(ok, row_offsets=[0, 3, 3]))
    with pytest.raises(ValueError, match="must run from 0 to len"):
        PackingPlan(**dict(ok, row_offsets=[0, 2]))


@pytest.mark.slow
def test_packing_imports_neither_torch_nor_megatron():
    code = ("import sys, dataset_engine.packing; "
            "bad = [m for m in ('torch', 'megatron', 'transformers') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
