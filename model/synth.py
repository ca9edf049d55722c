"""`python -m model.synth`: the command's entry point; the code is in `model.training.synth`."""

from model.training.synth import main

if __name__ == "__main__":
    raise SystemExit(main())
