import sys

from m2m.cli import main

sys.exit(main())
