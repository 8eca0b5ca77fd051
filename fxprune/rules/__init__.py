"""Op rules, one module per op family; importing this package registers them all."""
from . import (  # noqa: F401
    attention,
    concat,
    conv,
    creation,
    elementwise,
    embedding,
    linear,
    matmul,
    mvit,
    norm,
    pooling,
    recurrent,
    reduce,
    shape,
    swin,
)
