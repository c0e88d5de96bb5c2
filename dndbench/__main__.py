"""``python -m dndbench``."""
import sys

from dndbench.cli import main

sys.exit(main())
