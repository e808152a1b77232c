"""``python -m imgcls <stage> ...`` is the same as the ``imgcls`` console script."""
import sys

from imgcls.cli import main

sys.exit(main())
