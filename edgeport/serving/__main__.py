"""`python -m edgeport.serving --artifact DIR`: the server without Invoke (on a device)."""

import sys

from .server import main

sys.exit(main())
