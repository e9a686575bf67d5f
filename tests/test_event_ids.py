"""DBN event ids: the compiled builder (tickflow/_ids.c) writes what Arrow compute writes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tickflow.normalize import databento
from tickflow.normalize.databento import id_column

I64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(names=st.lists(st.text(max_size=12), min_size=1, max_size=5),
       data=st.data())
def test_compiled_ids_equal_the_arrow_ones(names: list[str], data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 40))
    index = np.array(data.draw(st.lists(st.integers(0, len(names) - 1), min_size=n,
                                        max_size=n)), np.int64)
    parts = tuple(np.array(data.draw(st.lists(I64, min_size=n, max_size=n)), np.int64)
                  for _ in range(data.draw(st.integers(1, 3))))
    compiled = id_column(names, index, parts)
    reference = id_column(names, index, parts, compiled=False)
    assert databento.join_ids is not None, "the compiled builder is not built"
    compiled.validate(full=True)
    assert compiled.to_pylist() == reference.to_pylist()
    if n:
        assert compiled.to_pylist()[0] == "|".join([names[index[0]],
                                                    *(str(int(p[0])) for p in parts)])
