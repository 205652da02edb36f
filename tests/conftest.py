import os

# tests never reach the network: every hub lookup must be served from a local cache
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest  # noqa: E402
import torch  # noqa: E402

# one intra-op thread: with two cores and any other process busy, OpenMP spin-waiting makes small
# convolutions up to 100x slower, while the gain of a second thread on these small models is modest
torch.set_num_threads(1)


# pytest-xdist runs test files side by side: every torchrun a test starts would take the default port 29500 and the
# second would die with "address already in use". A port picked once per worker is no cure: it is an ephemeral port,
# which any client socket (the other worker's process groups) may hold when a later launch binds it (CI saw that).
# torchrun --standalone (PET_STANDALONE, which torchrun reads like the flag) binds its store to port 0 at launch:
# the kernel's free port, no window. `accelerate launch` gets --main_process_port 0 from the tests likewise.
os.environ.setdefault('PET_STANDALONE', '1')


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, 'HF_HUB_OFFLINE', True)

