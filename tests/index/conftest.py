import sys
from pathlib import Path

# Test helpers (fake encoder, video writer) live beside the tests; subprocess tests import them too.
sys.path.insert(0, str(Path(__file__).parent))
