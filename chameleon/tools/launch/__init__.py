"""`chameleon launch`: start the shard ranks and the router as processes, and supervise them.

Pure Python (subprocess, signal, socket polling): the launcher never imports router/ or shard/.
"""

from chameleon.tools.launch.main import main

__all__ = ["main"]
