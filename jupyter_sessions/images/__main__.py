"""`python -m jupyter_sessions.images [--force]`: build the default kernel image, print its tag."""

import sys

from .builder import main

sys.exit(main())
