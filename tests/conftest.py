import os

# tests never reach the network: every hub lookup must be served from a local cache
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest  # noqa: E402
import torch  # noqa: E402

# one intra-op thread: with two cores and any other process busy, OpenMP spin-waiting makes small
# convolutions up to 100x slower, while the gain of a second thread on these small models is modest
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, 'HF_HUB_OFFLINE', True)

