import sys

from compactlm.cli import main

sys.exit(main())
