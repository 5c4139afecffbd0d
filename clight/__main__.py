import sys

from clight.cli import main

sys.exit(main())
