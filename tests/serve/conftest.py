import sys
from pathlib import Path

import pytest

# The fake encoder and video writer are shared with the index tests.
sys.path.insert(0, str(Path(__file__).parents[1] / "index"))


@pytest.fixture(scope="package")
def served_index(tmp_path_factory):
    from index_helpers import FakeEncoder, make_collection

    from vtrkit.index import VideoIndex

    root = tmp_path_factory.mktemp("served")
    paths = make_collection(root / "videos")
    index = VideoIndex.build(root / "videos", root / "lib", FakeEncoder())
    yield index, paths
    index.close()
