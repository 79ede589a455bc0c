"""Shared helpers of the synthetic-generator tests (not a test module)."""
import numpy as np

from synth.generator import generate_sample, sample_rng
from synth.script import load_script, parse_script_text


def scenario3_script(size=96, **replace):
    """The shipped scenario3 script at ``size`` px, sections edited by text replacement
    (``old=new``; each ``old`` must be in the text)."""
    s = load_script("scenario3").with_size(size, size)
    text = s.text
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return parse_script_text(text, s.path)


def samples(s, bundle, seed, n):
    """``(i, sample)`` for the first ``n`` samples of script ``s`` from ``seed``."""
    for i in range(n):
        yield i, generate_sample(s, sample_rng(seed, i), bundle)


def assert_deterministic_per_seed(s, bundle, seed, index):
    """Sample ``index`` of ``seed`` twice gives the same pixels, the next sample other ones;
    returns the first and the second draw of it."""
    a = generate_sample(s, sample_rng(seed, index), bundle)
    b = generate_sample(s, sample_rng(seed, index), bundle)
    c = generate_sample(s, sample_rng(seed, index + 1), bundle)
    for x in ("noisy", "clean", "mask"):
        np.testing.assert_array_equal(getattr(a, x), getattr(b, x))
    assert not np.array_equal(a.noisy, c.noisy)
    return a, b
