"""`python -m model.train`: the command's entry point; the code is in `model.training.train`."""

from model.training.train import main

if __name__ == "__main__":
    raise SystemExit(main())
