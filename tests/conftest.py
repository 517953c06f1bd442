import os

import torch

# Tests run on 2 shared cores: keep intra-op threads low so parallel work does not thrash.
torch.set_num_threads(int(os.environ.get("VTRKIT_TEST_THREADS", "1")))
