"""16-bit logits (float16, ml_dtypes' bfloat16), read directly by every function without a float32
copy: the kernels stage each row (tile, chunk) in float32, so every result must be the float32
result on the same values, rounded once to the 16-bit dtype (bit for bit), and within the 16-bit
rounding of the float64 reference and torch. Also: the exact conversion of every 16-bit value,
out=float32 gradients, in-place gradients, and torch tensors read through DLPack without a copy."""

import numpy as np
import pytest

import fastxent as fx

import reference as ref



def _bfloat16():
    return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)


def _dtype(name):
    return np.dtype(np.float16) if name == "float16" else _bfloat16()


DTYPES = ["float16", "bfloat16"]
# (shape, class axis): rows, few classes (transposed tiles), class axis not last (tiles), few rows of
# many classes (rows split into chunks), and more transposed tiles: of several transpose blocks with
# a partial last tile, and of two classes (loops of their own).
LAYOUTS = [
    ((37, 300), 1),
    ((300, 7), 1),
    ((5, 9, 6, 4), 1),
    ((3, 70000), 1),
    ((4, 11, 130), -1),
    ((200, 50), 1),
    ((300, 2), 1),
]
# A 16-bit ulp relative to the value: what rounding a float32 result once may change; and the
# spacing of the smallest values (float16's subnormals).
RTOL = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
ATOL = {"float16": 2.0**-24, "bfloat16": 1e-38}


def _near(got, expected, name):
    """``got`` (16-bit) within a 16-bit ulp of the float64 ``expected`` rounded to the same dtype
    (so that values beyond the dtype's range compare as infinities), plus float32's absolute error
    on values of order one (a log-sum of 1 + 1e-14 is 0 in float32)."""
    rounded = np.asarray(expected).astype(got.dtype).astype(np.float64)
    np.testing.assert_allclose(
        np.asarray(got).astype(np.float64), rounded, rtol=RTOL[name], atol=ATOL[name] + 2.0**-22
    )


def _logits(rng, shape, dtype, scale=3.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32).astype(dtype)


def _targets(rng, shape, axis):
    axis = axis % len(shape)
    row_shape = shape[:axis] + shape[axis + 1 :]
    return rng.integers(0, shape[axis], size=row_shape), axis


def _same(got, expected):
    """Bit-for-bit equal 16-bit arrays (NaN equal to NaN)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    a = got.view(np.uint16)
    b = expected.view(np.uint16)
    nan = np.isnan(got.astype(np.float32))
    np.testing.assert_array_equal(nan, np.isnan(expected.astype(np.float32)))
    np.testing.assert_array_equal(a[~nan], b[~nan])


@pytest.mark.parametrize("name", DTYPES)
def test_every_16_bit_value_is_read_exactly(name):
    """logsumexp of a one-class row is the logit itself (-0 becomes +0): every one of the 65536 bit
    patterns, through the transposed tiles and through contiguous rows (padded with -inf)."""
    dtype = _dtype(name)
    values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dtype)
    expected = values.astype(np.float32)
    got = fx.logsumexp(values.reshape(-1, 1), axis=1)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.astype(np.float32), expected)
    padded = np.full((65536, 40), -np.inf, np.float32).astype(dtype)
    padded[:, 17] = values
    np.testing.assert_array_equal(fx.logsumexp(padded, axis=1).astype(np.float32), expected)


def _float16_rounding_cases(rng):
    """float32 values of every kind for the rounding to float16: exact ties between float16 neighbours
    (normal and subnormal) and a float32 ulp either side, the overflow boundary, float32 subnormals,
    zeros, infinities and NaNs of both signs (quiet, with a payload, and signalling)."""
    halves = rng.integers(0, 0x7C00, size=300).astype(np.uint16).view(np.float16)
    low = halves.astype(np.float64)
    high = np.nextafter(halves, np.float16(np.inf)).astype(np.float64)
    ties = ((low + high) / 2).astype(np.float32)
    near = np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(0))])
    subnormal = (np.arange(-64, 64) * 2.0**-25).astype(np.float32)
    edges = np.array(
        [65504, 65519, 65519.996, 65520, 65536, 1e5, 6.0e-8, 2.9e-8, 3.0e-8, 6.1e-5, 1e-40, -1e-40, 0.0, -0.0,
         np.inf, -np.inf], np.float32
    )
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7FC12345, 0xFFD00001, 0x7F800001, 0xFF800123], np.uint32).view(
        np.float32
    )
    values = np.concatenate([nans, edges, -edges, subnormal, near, -near])
    assert values.size <= 16 * 128
    return np.resize(values, 16 * 128)


def test_float16_rounding_of_every_kind_of_value(rng):
    """The float16 gradient is the float32 gradient rounded once, bit for bit, whichever instruction
    set converts it (vcvtps2ph where F16C is there, integer code otherwise): NaN becomes 0x7e00 with
    its sign. Logits [0, -inf] with target 1 have the gradient [g, -g] for a grad_output g; the class
    axis is not last, so the gradient is stored in tiles of 128 contiguous values. (Zero and infinite
    g give other gradients, also compared.)"""
    g = _float16_rounding_cases(rng).reshape(16, 128)
    x = np.zeros((16, 2, 128), np.float32)
    x[:, 1, :] = -np.inf
    target = np.ones((16, 128), np.int64)
    got = fx.cross_entropy_grad(x.astype(np.float16), target, reduction="none", grad_output=g)
    want = fx.cross_entropy_grad(x, target, reduction="none", grad_output=g)
    finite = np.isfinite(g) & (g != 0)  # those reach the rounding unchanged: g * (1 - 0)
    np.testing.assert_array_equal(want[:, 0, :][finite], g[finite])
    assert np.isnan(want).sum() >= 12
    assert got.dtype == np.float16
    nan = np.isnan(want)
    with np.errstate(over="ignore"):  # beyond float16's range, as expected
        rounded = want[~nan].astype(np.float16)
    np.testing.assert_array_equal(got[~nan].view(np.uint16), rounded.view(np.uint16))
    np.testing.assert_array_equal(got[nan].view(np.uint16), 0x7E00 | (np.signbit(want[nan]) * 0x8000))


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("op", ["log_softmax", "softmax", "logsumexp"])
@pytest.mark.parametrize("scale", [3.0, 3000.0])
def test_softmax_family_is_float32_rounded_once(rng, name, shape, axis, op, scale):
    dtype = _dtype(name)
    x = _logits(rng, shape, dtype, scale)
    if scale > 100 and name == "float16":
        x = np.clip(x.astype(np.float32), -60000, 60000).astype(dtype)
    x.reshape(-1)[::97] = -np.inf  # masked logits
    f = getattr(fx, op)
    got = f(x, axis=axis)
    assert got.dtype == dtype
    _same(got, f(x.astype(np.float32), axis=axis).astype(dtype))
    _near(got, getattr(ref, op)(x.astype(np.float64), axis=axis), name)


@pytest.mark.parametrize("name", DTYPES)
def test_softmax_out(rng, name):
    dtype = _dtype(name)
    x = _logits(rng, (20, 50), dtype)
    out = np.empty(x.shape, dtype)
    assert fx.log_softmax(x, out=out) is out
    _same(out, fx.log_softmax(x.astype(np.float32)).astype(dtype))
    with pytest.raises(ValueError, match="dtype"):
        fx.log_softmax(x, out=np.empty(x.shape, np.float64))
    # in place
    y = x.copy()
    assert fx.softmax(y, out=y) is y
    _same(y, fx.softmax(x.astype(np.float32)).astype(dtype))


OPTIONS = [
    dict(),
    dict(reduction="sum", label_smoothing=0.1),
    dict(reduction="none", weight=True, ignore_some=True),
    dict(z_loss=1e-3, weight=True),
    dict(probability=True, label_smoothing=0.2),
]


def _loss_kwargs(rng, shape, axis, options):
    kwargs = dict(axis=axis)
    axis = axis % len(shape)
    for key in ("reduction", "label_smoothing", "z_loss"):
        if key in options:
            kwargs[key] = options[key]
    if options.get("weight"):
        kwargs["weight"] = rng.uniform(0.25, 2.0, shape[axis]).astype(np.float32)
    if options.get("probability"):
        target = ref.softmax(rng.standard_normal(shape), axis=axis).astype(np.float32)
    else:
        target, _ = _targets(rng, shape, axis)
        if options.get("ignore_some"):
            target = np.where(rng.random(target.shape) < 0.3, -100, target)
    return target, kwargs


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_cross_entropy_is_float32_rounded_once(rng, name, shape, axis, options):
    dtype = _dtype(name)
    x = _logits(rng, shape, dtype)
    target, kwargs = _loss_kwargs(rng, shape, axis, options)
    x32 = x.astype(np.float32)

    loss, grad = fx.cross_entropy_with_grad(x, target, **kwargs)
    loss32, grad32 = fx.cross_entropy_with_grad(x32, target, **kwargs)
    assert grad.dtype == dtype
    _same(grad, grad32.astype(dtype))
    if kwargs.get("reduction") == "none":
        assert loss.dtype == dtype
        _same(loss, loss32.astype(dtype))
    else:
        assert isinstance(loss, np.generic) and loss.dtype == dtype
        # Both are the same float64 total, rounded once to their dtype.
        np.testing.assert_allclose(float(loss), float(loss32), rtol=RTOL[name])
    _same(fx.cross_entropy_grad(x, target, **kwargs), grad)
    forward = fx.cross_entropy(x, target, **kwargs)
    np.testing.assert_array_equal(np.asarray(forward).astype(np.float32), np.asarray(loss).astype(np.float32))

    # against the float64 reference, on the exact 16-bit values
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "z_loss"}
    if "weight" in ref_kwargs:
        ref_kwargs["weight"] = ref_kwargs["weight"].astype(np.float64)
    if "z_loss" not in kwargs:
        expected_loss, expected_grad = ref.cross_entropy_with_grad(x.astype(np.float64), target, **ref_kwargs)
        _near(np.asarray(loss), expected_loss, name)
        # float32 arithmetic error, relative to the largest gradient, on top of the 16-bit rounding
        scale = np.abs(expected_grad).max()
        np.testing.assert_allclose(
            grad.astype(np.float64), expected_grad, rtol=RTOL[name], atol=ATOL[name] + 1e-6 * scale
        )


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("classes", [2, 5, 32])
def test_tiles_of_plain_rows(rng, name, classes):
    """Rows of few classes with the default options, which take the float32 kernels' loops for plain
    rows (two classes: loops of their own) on the converted tile: every result is the float32 one on
    the same values, rounded once, with ignored rows, a partial last tile, per-row grad_output, a
    float32 ``out`` and the gradient written over the logits."""
    dtype = _dtype(name)
    rows = 1000
    x = _logits(rng, (rows, classes), dtype)
    x32 = x.astype(np.float32)
    target = rng.integers(0, classes, rows)
    target[::7] = -100
    for reduction in ("mean", "sum", "none"):
        loss, grad = fx.cross_entropy_with_grad(x, target, reduction=reduction)
        loss32, grad32 = fx.cross_entropy_with_grad(x32, target, reduction=reduction)
        _same(grad, grad32.astype(dtype))
        forward = fx.cross_entropy(x, target, reduction=reduction)
        if reduction == "none":
            _same(loss, loss32.astype(dtype))
            _same(forward, loss32.astype(dtype))
        else:
            assert loss == forward == loss32.astype(dtype)
    upstream = rng.uniform(0.5, 2.0, rows).astype(np.float32)
    grad = fx.cross_entropy_grad(x, target, reduction="none", grad_output=upstream)
    _same(grad, fx.cross_entropy_grad(x32, target, reduction="none", grad_output=upstream).astype(dtype))
    out = np.empty((rows, classes), np.float32)
    fx.cross_entropy_grad(x, target, out=out)
    np.testing.assert_array_equal(out, fx.cross_entropy_grad(x32, target))
    work = x.copy()
    fx.cross_entropy_grad(work, target, out=work)
    _same(work, fx.cross_entropy_grad(x32, target).astype(dtype))
    _same(fx.log_softmax(x, axis=1), fx.log_softmax(x32, axis=1).astype(dtype))
    expected = ref.cross_entropy(x.astype(np.float64), target, reduction="none")
    _near(fx.cross_entropy(x, target, reduction="none"), expected, name)
    bad = target.copy()
    bad[rows - 3] = classes
    with pytest.raises(IndexError, match=f"target {classes} is out of bounds"):
        fx.cross_entropy(x, bad)
    with pytest.raises(IndexError, match=f"target {classes} is out of bounds"):
        fx.cross_entropy_with_grad(x, bad)


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("classes", [3, 10, 50])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_transposed_tiles_of_rows_of_a_wider_array(rng, name, classes, softcap):
    """Rows read through transposed tiles whose rows are not contiguous (the first columns of a wider
    array): the float32 results on the same values, rounded once."""
    dtype = _dtype(name)
    wide = _logits(rng, (300, classes + 5), dtype)
    x = wide[:, :classes]
    x32 = x.astype(np.float32)
    target = rng.integers(0, classes, 300)
    target[::9] = -100
    row_loss, grad = fx.cross_entropy_with_grad(x, target, reduction="none", softcap=softcap)
    row_loss32, grad32 = fx.cross_entropy_with_grad(x32, target, reduction="none", softcap=softcap)
    _same(row_loss, row_loss32.astype(dtype))
    _same(grad, grad32.astype(dtype))
    for op in ("log_softmax", "softmax"):
        f = getattr(fx, op)
        _same(f(x, axis=1), f(x32, axis=1).astype(dtype))
    if softcap is not None:
        return  # the float32 soft cap against float64: test_softcap.py
    expected_loss, expected_grad = ref.cross_entropy_with_grad(x.astype(np.float64), target, reduction="none")
    _near(row_loss, expected_loss, name)
    np.testing.assert_allclose(
        grad.astype(np.float64), expected_grad, rtol=RTOL[name], atol=ATOL[name] + 1e-6 * np.abs(expected_grad).max()
    )


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape", [(37, 11), (5, 3000), (300, 2), (0, 7)], ids=["37x11", "5x3000", "300x2", "empty"])
def test_fast_path_gives_the_general_paths_bits(rng, name, shape):
    """The common call on 16-bit logits (C-contiguous (N, C), a 1-D integer array of targets, default
    options; a gradient into `out` of their dtype or float32, or in place) is taken by _core directly,
    as for float32 (nll_loss and the softmax family, with or without out=, too); targets given as a
    memoryview, and a Fortran-ordered copy of the logits, take the general path. Both give the same
    bits."""
    from fastxent import _core

    dtype = _dtype(name)
    x = _logits(rng, shape, dtype)
    target = rng.integers(0, shape[1], shape[0])
    target[::4] = -100
    assert _core.cross_entropy_fast(x, target, -100, 1) is not None
    assert _core.cross_entropy_fast_with(x, target, -100, 0, 1.0, True, True, None, None, None) is not None
    per_row = rng.standard_normal(shape[0])  # after a fast forward, a backward of the general path
    for reduction in ["none", "mean", "sum"]:
        for grad_output in [1.0, -0.25] + ([per_row] if reduction == "none" else []):
            results = []
            for t in (target, memoryview(target)):
                loss = fx.cross_entropy(x, t, reduction=reduction)
                grad = fx.cross_entropy_grad(x, t, reduction=reduction, grad_output=grad_output)
                both = fx.cross_entropy_with_grad(x, t, reduction=reduction, grad_output=grad_output)
                criterion = fx.CrossEntropyLoss(reduction=reduction)
                forward = criterion(x, t)
                results.append([loss, grad, *both, forward, criterion.backward(grad_output)])
            for fast, general in zip(*results):
                assert type(fast) is type(general) and np.asarray(fast).dtype == dtype
                _same(np.asarray(fast), np.asarray(general))
        want = fx.cross_entropy(x.astype(np.float32), target, reduction=reduction)
        _same(np.asarray(fx.cross_entropy(x, target, reduction=reduction)), np.asarray(want).astype(dtype))
    for out in ["16-bit", "float32", "in-place"]:  # gradients into `out`
        logits = x.copy()
        probe = {"16-bit": np.empty_like(x), "float32": np.empty(shape, np.float32), "in-place": logits}[out]
        assert _core.cross_entropy_fast_with(logits, target, -100, 1, 1.0, False, True, probe, None, None) is not None
        grads = []
        for t in (target, memoryview(target)):
            logits = x.copy()
            buffer = {"16-bit": np.empty_like(x), "float32": np.empty(shape, np.float32), "in-place": logits}[out]
            loss, grad = fx.cross_entropy_with_grad(logits, t, reduction="sum", out=buffer)
            assert grad is buffer
            grads.append((loss, grad))
        (fast_loss, fast_grad), (general_loss, general_grad) = grads
        np.testing.assert_array_equal(fast_grad.view(np.uint8), general_grad.view(np.uint8))
        _same(np.asarray(fast_loss), np.asarray(general_loss))
    log_probs = fx.log_softmax(x)
    assert _core.nll_loss_fast(log_probs, target, -100, 1) is not None
    for reduction in ["none", "mean", "sum"]:
        fast = fx.nll_loss(log_probs, target, reduction=reduction)
        general = fx.nll_loss(log_probs, memoryview(target), reduction=reduction)
        assert type(fast) is type(general) and np.asarray(fast).dtype == dtype
        _same(np.asarray(fast), np.asarray(general))
    for op in ["log_softmax", "softmax", "logsumexp"]:
        code = {"log_softmax": 0, "softmax": 1, "logsumexp": 2}[op]
        assert _core.softmax_fast(x, code, -1) is not None
        fast = getattr(fx, op)(x)
        assert fast.dtype == dtype
        _same(fast, getattr(fx, op)(np.asfortranarray(x), axis=1))
        _same(fast, getattr(fx, op)(x.astype(np.float32)).astype(dtype))
        if op != "logsumexp":  # into out= of their dtype, and in place
            out = np.empty_like(x)
            assert _core.softmax_fast(x, code, -1, out) is out
            _same(out, fast)
            in_place = x.copy()
            assert getattr(fx, op)(in_place, out=in_place) is in_place
            _same(in_place, fast)


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS[:4])
def test_gradient_into_float32_out(rng, name, shape, axis):
    dtype = _dtype(name)
    x = _logits(rng, shape, dtype)
    target, _ = _targets(rng, shape, axis)
    out = np.empty(shape, np.float32)
    got = fx.cross_entropy_grad(x, target, axis=axis, out=out)
    assert got is out
    np.testing.assert_array_equal(out, fx.cross_entropy_grad(x.astype(np.float32), target, axis=axis))
    with pytest.raises(ValueError, match="dtype"):
        fx.cross_entropy_grad(x, target, axis=axis, out=np.empty(shape, np.float64))


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_gradient_in_place(rng, name, shape, axis):
    dtype = _dtype(name)
    x = _logits(rng, shape, dtype)
    target, _ = _targets(rng, shape, axis)
    expected = fx.cross_entropy_grad(x, target, axis=axis, softcap=4.0)
    work = x.copy()
    got = fx.cross_entropy_grad(work, target, axis=axis, softcap=4.0, out=work)
    assert got is work
    _same(work, expected)


@pytest.mark.parametrize("name", DTYPES)
def test_loss_class(rng, name):
    dtype = _dtype(name)
    x = _logits(rng, (64, 33), dtype)
    target = rng.integers(0, 33, 64)
    crit = fx.CrossEntropyLoss(label_smoothing=0.1, softcap=10.0)
    loss = crit(x, target)
    assert loss.dtype == dtype
    grad = crit.backward()
    _same(grad, fx.cross_entropy_grad(x, target, label_smoothing=0.1, softcap=10.0))


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_score_matches_float32(rng, name, shape, axis):
    dtype = _dtype(name)
    x = _logits(rng, shape, dtype)
    target, _ = _targets(rng, shape, axis)
    target = np.stack([target, (target + 1) % shape[axis]], axis=-1)
    got = fx.score(x, target, axis=axis)
    expected = fx.score(x.astype(np.float32), target, axis=axis)
    for field in got._fields:
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)
    assert got.logprob.dtype == np.float32


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape,axis", [((6, 50, 120), -1), ((3, 7000), -1), ((4, 120, 9), 1)])
def test_score_spans_match_float32(rng, name, shape, axis):
    dtype = _dtype(name)
    x = _logits(rng, shape, dtype)
    target, _ = _targets(rng, shape, axis)
    rows = target.size
    starts = np.array([0, 1, rows // 2, rows - 1, 3])
    lengths = np.array([1, rows // 3, rows - rows // 2, 1, 0])
    got = fx.score_spans(x, target, starts, lengths, axis=axis)
    expected = fx.score_spans(x.astype(np.float32), target, starts, lengths, axis=axis)
    for field in got._fields:
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS + [((40_000, 3), 1)])
def test_nll_loss(rng, name, shape, axis):
    """nll_loss reads the 16-bit log-probabilities in place (in any layout, strided too): the float32
    results on the same values, rounded once."""
    dtype = _dtype(name)
    log_probs = fx.log_softmax(_logits(rng, shape, dtype), axis=axis)
    target, axis = _targets(rng, shape, axis)
    target.reshape(-1)[::5] = -100
    weight = rng.uniform(0.5, 2.0, shape[axis]).astype(np.float32)
    for variant in (log_probs, np.asfortranarray(log_probs)):
        for reduction in ("none", "mean", "sum"):
            got = fx.nll_loss(variant, target, weight, axis=axis, reduction=reduction)
            assert got.dtype == dtype
            want = fx.nll_loss(log_probs.astype(np.float32), target, weight, axis=axis, reduction=reduction)
            _same(np.asarray(got), np.asarray(want).astype(dtype))
    view = np.moveaxis(np.moveaxis(np.repeat(log_probs, 2, axis=axis), axis, 0)[::2], 0, axis)
    assert not view.flags.c_contiguous
    got = fx.nll_loss(view, target, axis=axis, reduction="none")
    _same(got, fx.nll_loss(log_probs, target, axis=axis, reduction="none"))


@pytest.mark.parametrize("name", DTYPES)
def test_results_rounded_from_float32(rng, name):
    """The float32 results of 16-bit calls (row losses, logsumexp) are rounded to the 16-bit dtype by
    the core, over threads for long arrays: as NumPy's cast, bit for bit, for every kind of value; a
    NaN becomes the quiet NaN of its sign."""
    from fastxent import _core

    dtype = _dtype(name)
    any_bits = rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = np.concatenate([_float16_rounding_cases(rng), any_bits])
    out = _core.narrow(values, dtype, 0 if name == "float16" else 1)
    assert out.dtype == dtype and out.shape == values.shape
    nan = np.isnan(values)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values[~nan].astype(dtype)
    np.testing.assert_array_equal(out[~nan].view(np.uint16), expected.view(np.uint16))
    bits = out[nan].view(np.uint16)
    assert np.isnan(out[nan].astype(np.float32)).all()
    np.testing.assert_array_equal(bits >> 15, np.signbit(values[nan]))
    if name == "float16":
        np.testing.assert_array_equal(bits & 0x7FFF, 0x7E00)
    # Through the public functions: 'none' row losses of many rows, and logsumexp.
    x = _logits(rng, (50_000, 3), dtype, scale=30.0)
    target = rng.integers(0, 3, 50_000)
    want = fx.cross_entropy(x.astype(np.float32), target, reduction="none").astype(dtype)
    _same(fx.cross_entropy(x, target, reduction="none"), want)
    _same(fx.logsumexp(x, axis=1), fx.logsumexp(x.astype(np.float32), axis=1).astype(dtype))


def test_nan_and_infinity(rng):
    dtype = _bfloat16()
    x = _logits(rng, (4, 50), dtype)
    x[0, 3] = np.nan
    x[1, 7] = np.inf
    x[2, :] = -np.inf
    target = np.array([0, 1, 2, 3])
    loss = fx.cross_entropy(x, target, reduction="none")
    assert np.isnan(loss[0].astype(np.float32)) and np.isnan(loss[1].astype(np.float32))
    _same(loss, fx.cross_entropy(x.astype(np.float32), target, reduction="none").astype(dtype))


# ---------------------------------------------------------------------------------------------------
# torch: values and gradients against torch on the same 16-bit logits, and tensors read in place.


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS[:3])
def test_against_torch(rng, name, shape, axis):
    torch = pytest.importorskip("torch")
    dtype = _dtype(name)
    x = _logits(rng, shape, dtype)
    target, class_axis = _targets(rng, shape, axis)
    t = torch.from_numpy(x.astype(np.float32)).to(getattr(torch, name)).requires_grad_()
    tt = torch.movedim(t, class_axis, 1) if class_axis != 1 else t
    loss = torch.nn.functional.cross_entropy(tt.float(), torch.from_numpy(target))
    loss.backward()
    got_loss, got_grad = fx.cross_entropy_with_grad(x, target, axis=axis)
    np.testing.assert_allclose(float(got_loss), loss.item(), rtol=2 * RTOL[name])
    expected = t.grad.float().numpy()
    np.testing.assert_allclose(got_grad.astype(np.float32), expected, rtol=2 * RTOL[name], atol=2 * RTOL[name] * np.abs(expected).max())
    lsm = torch.log_softmax(t.detach(), dim=class_axis).float().numpy()
    np.testing.assert_allclose(fx.log_softmax(x, axis=axis).astype(np.float32), lsm, rtol=2 * RTOL[name], atol=RTOL[name])


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_torch_tensors_are_read_in_place(rng, name):
    torch = pytest.importorskip("torch")
    dtype = np.dtype(np.float32) if name == "float32" else _dtype(name)
    x = _logits(rng, (16, 40), dtype)
    tensor = torch.from_numpy(x.astype(np.float32)).to(getattr(torch, name))
    target = rng.integers(0, 40, 16)
    got = fx.log_softmax(tensor)
    assert isinstance(got, np.ndarray) and got.dtype == dtype
    np.testing.assert_array_equal(got, fx.log_softmax(x))
    loss, grad = fx.cross_entropy_with_grad(tensor, torch.from_numpy(target))
    assert grad.dtype == dtype
    np.testing.assert_array_equal(grad, fx.cross_entropy_grad(x, target))
    np.testing.assert_array_equal(fx.score(tensor, target).logprob, fx.score(x, target).logprob)
    # A strided view (a transposed tensor) is read in place through its strides.
    wide = torch.from_numpy(_logits(rng, (40, 16), np.float32)).to(getattr(torch, name))
    np.testing.assert_array_equal(
        fx.logsumexp(wide.T), fx.logsumexp(np.ascontiguousarray(wide.float().numpy().T).astype(dtype))
    )


@pytest.mark.parametrize("name", ["float32", "float64", "float16", "bfloat16"])
def test_the_common_call_on_torch_tensors_takes_the_short_path(rng, monkeypatch, name):
    """A torch CPU tensor is viewed through .numpy() (its memory, no copy; bfloat16 as its int16
    bits), so the common call (2-D logits, index targets, default options) skips the general path's
    argument normalisation as a NumPy array does, and gives the same bits."""
    torch = pytest.importorskip("torch")
    import fastxent._functional as functional

    x = _logits(rng, (32, 10), _bfloat16() if name == "bfloat16" else np.dtype(name))
    target = rng.integers(0, 10, 32)
    calls = {
        "cross_entropy": lambda x, t: fx.cross_entropy(x, t),
        "none": lambda x, t: fx.cross_entropy(x, t, reduction="none"),
        "grad": lambda x, t: fx.cross_entropy_grad(x, t),
        "with_grad": lambda x, t: fx.cross_entropy_with_grad(x, t, reduction="sum"),
        "nll_loss": lambda x, t: fx.nll_loss(x, t),
        "log_softmax": lambda x, t: fx.log_softmax(x),
        "logsumexp": lambda x, t: fx.logsumexp(x),
        "loss class": lambda x, t: fx.CrossEntropyLoss()(x, t),
    }
    expected = {key: call(x, target) for key, call in calls.items()}
    if name == "bfloat16":
        tensor = torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(x.copy())
    target_tensor = torch.from_numpy(target.copy())

    def general_path(*args, **kwargs):
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(functional, "_prepare", general_path)
    monkeypatch.setattr(functional.args, "class_view", general_path)
    got = {key: call(tensor, target_tensor) for key, call in calls.items()}
    monkeypatch.undo()
    for key, value in expected.items():
        if key == "with_grad":
            assert got[key][0] == value[0] and type(got[key][0]) is type(value[0])
            np.testing.assert_array_equal(got[key][1], value[1])
        else:
            assert type(got[key]) is type(value), key
            np.testing.assert_array_equal(got[key], value)
    criterion = fx.CrossEntropyLoss(reduction="sum")
    criterion(tensor, target_tensor)
    np.testing.assert_array_equal(criterion.backward(), fx.cross_entropy_grad(x, target, reduction="sum"))
    # the view is the tensor's memory, not a copy
    view = fx._arguments.numpy_view(tensor)
    assert type(view) is np.ndarray and view.dtype == x.dtype and view.ctypes.data == tensor.data_ptr()
    # what .numpy() refuses is looked at before it is called, its exception being slow
    calls_of_numpy = []
    monkeypatch.setattr(torch.Tensor, "numpy", lambda self, *a, **k: calls_of_numpy.append(self))
    grad_tensor = tensor.detach().clone().requires_grad_(True)
    assert fx._arguments.numpy_view(grad_tensor) is grad_tensor and calls_of_numpy == []
    monkeypatch.undo()
    # tensors NumPy cannot view this way still go through DLPack, or are refused as before
    with pytest.raises((RuntimeError, BufferError), match="detach"):
        fx.cross_entropy(torch.zeros(3, 4, requires_grad=True), torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("source", ["numpy", "torch"])
def test_16_bit_weights_probability_targets_and_grad_output(rng, source, name):
    """Class weights, probability targets and grad_output of a 16-bit dtype (a NumPy array, or a torch
    tensor, which NumPy cannot convert from bfloat16) are their float32 values, as torch takes them."""
    dtype = _dtype(name)
    x = _logits(rng, (6, 5), dtype)
    target = rng.integers(0, 5, 6)
    weight = (rng.random(5) + 0.5).astype(np.float32).astype(dtype)
    probability = rng.dirichlet(np.ones(5), 6).astype(np.float32).astype(dtype)
    grad_output = np.array(-0.75, dtype)
    per_row = (rng.standard_normal(6)).astype(np.float32).astype(dtype)

    if source == "torch":
        torch = pytest.importorskip("torch")
        wrap = lambda a: torch.from_numpy(np.asarray(a, np.float32)).to(getattr(torch, name))  # noqa: E731
    else:
        wrap = lambda a: a  # noqa: E731
    wide = lambda a: np.asarray(a, np.float32)  # noqa: E731
    _same(fx.cross_entropy(x, target, wrap(weight), label_smoothing=0.1),
          fx.cross_entropy(x, target, wide(weight), label_smoothing=0.1))
    _same(fx.cross_entropy(x, wrap(probability), reduction="none"), fx.cross_entropy(x, wide(probability), reduction="none"))
    _same(fx.cross_entropy_grad(x, target, grad_output=wrap(grad_output)),
          fx.cross_entropy_grad(x, target, grad_output=float(grad_output)))
    _same(fx.cross_entropy_grad(x, target, reduction="none", grad_output=wrap(per_row)),
          fx.cross_entropy_grad(x, target, reduction="none", grad_output=wide(per_row)))
    criterion, wide_criterion = fx.CrossEntropyLoss(wrap(weight)), fx.CrossEntropyLoss(wide(weight))
    _same(np.asarray(criterion(x, wrap(probability))), np.asarray(wide_criterion(x, wide(probability))))
    _same(criterion.backward(wrap(grad_output)), wide_criterion.backward(float(grad_output)))


@pytest.mark.parametrize("api", ["log_softmax", "softmax", "cross_entropy_grad", "cross_entropy_with_grad", "loss class"])
def test_torch_tensor_in_place_through_its_numpy_view(rng, api):
    """out= may be the NumPy view of a torch tensor passed as the logits (in place), as for a NumPy
    array, in every function that takes out=; a shifted view of the same memory is still refused."""
    torch = pytest.importorskip("torch")
    x = _logits(rng, (6, 5), np.float32)
    target = rng.integers(0, 5, 6)
    calls = {
        "log_softmax": lambda logits, out: fx.log_softmax(logits, out=out),
        "softmax": lambda logits, out: fx.softmax(logits, out=out),
        "cross_entropy_grad": lambda logits, out: fx.cross_entropy_grad(logits, target, out=out),
        "cross_entropy_with_grad": lambda logits, out: fx.cross_entropy_with_grad(logits, target, out=out)[1],
        "loss class": lambda logits, out: (lambda c: (c(logits, target), c.backward(out=out))[1])(fx.CrossEntropyLoss()),
    }
    expected = calls[api](x.copy(), None)
    tensor = torch.from_numpy(x.copy())
    view = tensor.numpy()
    assert calls[api](tensor, view) is view
    np.testing.assert_array_equal(tensor.numpy(), expected)
    tensor = torch.from_numpy(np.concatenate([x, x[:1]]))
    with pytest.raises(ValueError, match="overlap"):
        calls[api](tensor[1:], tensor.numpy()[:-1])


def test_torch_views_with_the_negative_bit_are_read_negated():
    """The imaginary part of a conjugate is a lazily negated view, whose memory holds the values
    un-negated: read as the values it stands for, as logits and as weights (which NumPy refuses)."""
    torch = pytest.importorskip("torch")
    z = torch.tensor([1 + 1j, 2 + 3j, 0.5 - 2j], dtype=torch.complex64)
    view = z.conj().imag
    assert view.is_neg()
    values = view.resolve_neg().numpy()
    np.testing.assert_array_equal(fx.log_softmax(view), fx.log_softmax(values))
    np.testing.assert_array_equal(fx.cross_entropy(view, 2), fx.cross_entropy(values, 2))
    weight = torch.tensor([-0.25j, -0.5j, -2j], dtype=torch.complex64).conj().imag
    assert weight.is_neg()
    np.testing.assert_array_equal(
        fx.cross_entropy(values, np.array(1), weight), fx.cross_entropy(values, np.array(1), np.float32([0.25, 0.5, 2]))
    )


def test_dlpack_view_shares_memory():
    torch = pytest.importorskip("torch")
    from fastxent import _arguments

    tensor = torch.zeros(3, 5, dtype=torch.bfloat16)
    array, dtype = _arguments.logits(tensor)
    assert dtype == _bfloat16()
    tensor[1, 2] = 7.0
    assert float(array[1, 2]) == 7.0  # a view, not a copy
    assert array.__array_interface__["data"][0] == tensor.data_ptr()


def test_dlpack_rejects_other_dtypes_and_devices():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        fx.log_softmax(torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises((RuntimeError, BufferError), match="detach"):
        fx.log_softmax(torch.zeros(3, 4, requires_grad=True))  # torch refuses to export it


def test_bfloat16_without_ml_dtypes_message(monkeypatch):
    torch = pytest.importorskip("torch")
    import builtins

    real_import = builtins.__import__

    def no_ml_dtypes(name, *a, **k):
        if name == "ml_dtypes":
            raise ImportError("no ml_dtypes")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ml_dtypes)
    with pytest.raises(TypeError, match="ml_dtypes"):
        fx.log_softmax(torch.zeros(3, 4, dtype=torch.bfloat16))
