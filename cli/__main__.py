"""``python -m graphinterp.cli ...`` (also ``torchrun -m graphinterp.cli ...``): the ``graphinterp`` command."""
from graphinterp.cli.main import main

if __name__ == "__main__":
    main()
