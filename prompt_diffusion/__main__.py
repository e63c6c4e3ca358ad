import sys

from prompt_diffusion.cli import main

sys.exit(main())
