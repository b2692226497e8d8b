import sys

from chameleon.cli import main

sys.exit(main())
