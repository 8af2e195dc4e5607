"""`python -m jupyter_mlx_manager.cli …`, the same as `jupyter mlx-manager …`."""

import sys

from . import main

sys.exit(main())
