"""`python -m model.deepfashion_convert`: entry point (the code: `model.training.deepfashion`)."""

from model.training.deepfashion import main

if __name__ == "__main__":
    raise SystemExit(main())
