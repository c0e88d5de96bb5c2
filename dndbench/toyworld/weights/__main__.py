"""``python -m dndbench.toyworld.weights``: refresh the shipped toy-world weights."""
import sys

from dndbench.toyworld.weights import main

sys.exit(main())
