"""``python -m dg_rl fit --config run.yaml``: see :mod:`dg_rl.cli`."""

from dg_rl.cli import main

if __name__ == "__main__":
    main()
