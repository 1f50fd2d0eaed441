"""Small helpers shared by the tests: unit-norm random vectors."""
import numpy as np


def normalized(x):
    "Rows of `x` scaled to unit norm, as float32."
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def unit(rng, n:int, d:int=128):
    "`n` random unit vectors of `d` dims from `rng`."
    return normalized(rng.standard_normal((n, d)).astype(np.float32))
