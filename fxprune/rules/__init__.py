"""Op rules, one module per op family; importing this package registers them all."""
from . import (  # noqa: F401
    concat,
    conv,
    elementwise,
    embedding,
    linear,
    matmul,
    norm,
    pooling,
    reduce,
    shape,
)
