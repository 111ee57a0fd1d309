"""``python -m dg_expmodel fit --config fit.yaml``: see :mod:`dg_expmodel.cli`."""

from dg_expmodel.cli import main

if __name__ == "__main__":
    main()
