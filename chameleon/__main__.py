import sys

from chameleon.tools.cli import main

sys.exit(main())
