import os

# tests never reach the network: every hub lookup must be served from a local cache
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest  # noqa: E402
import torch  # noqa: E402

# one intra-op thread: with two cores and any other process busy, OpenMP spin-waiting makes small
# convolutions up to 100x slower, while the gain of a second thread on these small models is modest
torch.set_num_threads(1)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# pytest-xdist runs test files side by side: every torchrun a test starts would take the default port 29500 and the
# second would die with "address already in use"; each worker gives its launches a port of its own (torchrun reads
# PET_MASTER_PORT, `accelerate launch` its --main_process_port, which the tests pass as 0 = a free one)
os.environ.setdefault('PET_MASTER_PORT', str(_free_port()))


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, 'HF_HUB_OFFLINE', True)

