"""The public surface: __all__ lists exactly the public names, all of them real."""

from __future__ import annotations

import litepool


def test_all_matches_public_names() -> None:
    public = {name for name in vars(litepool) if not name.startswith("_")}
    # Submodules are attributes of the package after import; they are private modules.
    public -= {name for name in public if name.startswith("_")}
    assert set(litepool.__all__) == public | {"__version__"}
    assert len(litepool.__all__) == len(set(litepool.__all__))
    for name in litepool.__all__:
        assert hasattr(litepool, name)


def test_error_hierarchy() -> None:
    for error in (
        litepool.PoolTimeout,
        litepool.PoolClosed,
        litepool.ConnectionReleased,
        litepool.TransactionAborted,
    ):
        assert issubclass(error, litepool.PoolError)
    assert issubclass(litepool.PoolTimeout, TimeoutError)
