"""`python -m model.fashionai_convert`: entry point (the code: `model.training.fashionai`)."""

from model.training.fashionai import main

if __name__ == "__main__":
    raise SystemExit(main())
