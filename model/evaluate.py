"""`python -m model.evaluate`: the command's entry point (the code: `model.training.evaluate`)."""

from model.training.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
