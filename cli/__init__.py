"""The ``graphinterp`` command line (installed as the ``graphinterp.cli`` package)."""
