"""``python -m training``: train one stage (see training/train.py)."""

import sys

from .train import main

sys.exit(main())
