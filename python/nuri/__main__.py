"""``python -m nuri``: see nuri.cli."""

import sys

from nuri.cli import main

if __name__ == "__main__":
    sys.exit(main())
