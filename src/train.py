"""`python -m train`: the `mnistlab train` command (mnistlab.cli) under its first name."""

from mnistlab.cli import main

if __name__ == "__main__":
    main()
