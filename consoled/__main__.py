import sys

from consoled.cli import main

sys.exit(main())
