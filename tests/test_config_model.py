"""compactlm.config.model: ModelConfig refuses what no model could be built from."""

import pytest

from compactlm.config.model import MAX_SEQ_LEN
from compactlm.errors import ConfigError
from tests.conftest import random_config


def test_context_beyond_the_limit_is_refused_before_any_table_is_built():
    assert random_config(max_seq_len=MAX_SEQ_LEN).max_seq_len == MAX_SEQ_LEN
    with pytest.raises(ConfigError, match=r"max_seq_len 1,048,577 is above the 1,048,576 tokens compactlm supports"):
        random_config(max_seq_len=MAX_SEQ_LEN + 1)
