"""The FashionAI converter (model/training/fashionai.py): a label CSV to the published layout
through the dataset builder, with a report of the lines it skipped."""

from __future__ import annotations

from pathlib import Path

from testkit import write_image

from model.attributes import BUILTIN_ATTRIBUTES
from model.training import fashionai as fashionai_convert
from model.training.data import load_split, read_attributes


def test_fashionai_convert_round_trip(tmp_path: Path) -> None:
    images = tmp_path / "fashionAI"
    rows = ["image_path,attribute,label"]
    expected = {}
    for i in range(20):
        attr = ("skirt_length_labels", "collar_design_labels")[i % 2]
        n = 6 if i % 2 == 0 else 5
        value = i % n
        path = f"Images/{attr}/{i:03d}.jpg"
        write_image(images / path, (i * 10, 50, 100))
        label = "".join("y" if k == value else ("m" if k == (value + 1) % n else "n")
                        for k in range(n))
        rows.append(f"{path},{attr},{label}")
        expected[path] = (0 if i % 2 == 0 else 1, value)   # skirt_length, collar_design
    write_image(images / "Images/neck_design_labels/x.jpg")
    write_image(images / "Images/neck_design_labels/y.jpg", (0, 90, 0))
    rows += [
        "Images/skirt_length_labels/000.jpg,skirt_length_labels,nnnnnn",   # line 22: no y
        "Images/neck_design_labels/x.jpg,neck_design_labels,ynyn",         # 23: wrong length
        "Images/neck_design_labels/x.jpg,neck_design_labels,ynnny",        # 24: several y
        "Images/neck_design_labels/x.jpg,hat_labels,ynnnn",                # 25: unknown attr
        "Images/neck_design_labels/gone.jpg,neck_design_labels,nynnn",     # 26: missing image
        "Images/neck_design_labels/x.jpg,neck_design_labels,nnnyn",        # 27: ok
        "Images/neck_design_labels/y.jpg,neck_design_labels,ynnnn",        # 28: ok
    ]
    expected["Images/neck_design_labels/x.jpg"] = (2, 3)   # neck_design
    expected["Images/neck_design_labels/y.jpg"] = (2, 0)
    csv_path = tmp_path / "label.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert fashionai_convert.main(["--csv", str(csv_path), "--images", str(images),
                                   "--out", str(out), "--valid-frac", "0.2",
                                   "--test-frac", "0.3"]) == 0
    report = (out / "conversion_report.txt").read_text()
    for line in (22, 23, 24, 25, 26):
        assert f"label.csv:{line}: skipped" in report
    assert report.count("skipped") == 5
    # the attributes the CSV labels, in the published order, with their published value counts
    fai = {a.name: a for a in BUILTIN_ATTRIBUTES["FashionAI"]}
    assert read_attributes(out) == [fai["skirt_length"], fai["collar_design"], fai["neck_design"]]
    seen = {}
    for split in ("train", "valid", "test"):
        s = load_split(out, split)
        rel = [p.relative_to(images).as_posix() for p in s.image_paths]
        for image_id, labs in s.labels.items():
            seen[rel[image_id]] = next(iter(labs.items()))
        if split != "train":
            ids = sorted(i for i, _, _ in s.queries + s.candidates)
            assert ids == list(range(len(s)))
    assert seen == expected
    sizes = {s: len(load_split(out, s)) for s in ("train", "valid", "test")}
    assert sum(sizes.values()) == 22 and min(sizes.values()) >= 3, sizes
