import pytest

from browser_control.seeds import EVAL_SEED_RANGE, TRAIN_SEED_RANGE, eval_seed, train_seed


def test_train_and_eval_seeds_are_disjoint_even_with_large_offsets() -> None:
    # Indexing, not max()/min(): those would iterate the two billion seeds one by one.
    assert TRAIN_SEED_RANGE[-1] < EVAL_SEED_RANGE[0]
    assert train_seed(5, offset=10) == 15 and eval_seed(5, offset=10) == 1_000_000_015
    with pytest.raises(ValueError, match="outside"):
        train_seed(0, offset=1_000_000_000)
    with pytest.raises(ValueError, match="outside"):
        eval_seed(0, offset=-1)
