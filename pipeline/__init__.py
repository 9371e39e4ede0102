"""The driver: config, run plan, scheduler on Ray, exports, status and the CLI."""

import os as _os

# Ray reads this when it is imported: without it a local Ray swaps 127.0.0.1 for the
# machine's other address and drivers then try to reach that. Set before any submodule
# imports ray (see ../shared/ENVIRONMENT.md, "Keep Ray on loopback").
_os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
