"""`python -m model.dataset`: the command's entry point; the code is in `model.training.dataset`."""

from model.training.dataset import main

if __name__ == "__main__":
    raise SystemExit(main())
