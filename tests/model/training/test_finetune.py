"""Fine-tuning (`python -m model.train --init`): what is kept, what starts fresh, provenance,
and the command lines that are refused."""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import replace

import pytest
import torch
from testkit import REPO_ROOT, synthetic_dataset, tiny_checkpoint

from model import build_model, get_config
from model.attributes import AttributeSpec
from model.checkpoint import describe_checkpoint, read_checkpoint_file, save_checkpoint
from model.config import TRAIN_CONFIGS
from model.errors import CheckpointError
from model.osutil import sha256_file
from model.training.data import read_attributes
from model.training.finetune import init_from
from model.training.train import UsageError, build_parser, config_from_args, main, run

_spec = importlib.util.spec_from_file_location("add_attribute",
                                               REPO_ROOT / "scripts" / "add_attribute.py")
add_attribute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(add_attribute)

CFG = replace(TRAIN_CONFIGS["tiny"], triplets_per_epoch=32, batch_size=8, valid_limit=4,
              freeze_backbones=True, starts=3,
              stage1=replace(TRAIN_CONFIGS["tiny"].stage1, epochs=1))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic dataset (six attributes), the same with `category` added by
    scripts/add_attribute.py, and a random tiny checkpoint of the six; read-only."""
    base = tmp_path_factory.mktemp("finetune")
    six = synthetic_dataset(base / "six", seed=4, n_train=48, n_valid=24, n_test=120)
    seven = base / "seven"
    values = add_attribute.add_attribute(six, seven, "category", "category")
    return six, seven, values, tiny_checkpoint(base / "six.pt", six, seed=1)


def test_add_attribute_keeps_the_old_lines_and_labels_every_training_image(data):
    six, seven, values, _ = data
    attrs = read_attributes(seven)
    assert [a.name for a in attrs] == [a.name for a in read_attributes(six)] + ["category"]
    assert attrs[-1].n_values == len(values) and values == sorted(values)
    old = (six / "query_test.txt").read_text().splitlines()
    new = (seven / "query_test.txt").read_text().splitlines()
    assert new[:len(old)] == old and all(ln.split()[1] == "6" for ln in new[len(old):])
    assert len(new) - len(old) == round(len(old) / 6)
    assert all(len(ln.split()) == 15 for ln in (seven / "label_train.txt").read_text().split("\n")
               if ln)
    mean, _ = add_attribute.chance_map(seven, 6, draws=20)
    assert 15 < mean < 70         # 4 values: about 25-40% for so few candidates


def test_init_copies_shared_weights_and_the_rows_of_matching_names(data, tmp_path):
    _, _, _, ckpt = data
    source = read_checkpoint_file(ckpt)["state_dict"]
    names = [a["name"] for a in read_checkpoint_file(ckpt)["attributes"]]
    # the run's attributes in another order, one new, one gone, one with another value count
    specs = [AttributeSpec("category", 4), AttributeSpec(names[3], 4),
             AttributeSpec(names[0], 7), *(AttributeSpec(n, 4) for n in names[1:3])]
    torch.manual_seed(5)
    net = build_model("tiny", specs)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    prov = init_from(net, ckpt)
    state = net.state_dict()
    table = "choices.global.attrnet.attr_embedding.weight"
    for j, spec in enumerate(specs):
        if spec.name in names:
            assert torch.equal(state[table][j], source[table][names.index(spec.name)])
        else:
            assert torch.equal(state[table][j], fresh[table][j])    # a fresh row
    assert torch.equal(state[table], state[table.replace("global", "local")])
    shared = [k for k in source if not k.endswith(("attr_embedding.weight", "running_mean"))]
    assert any(".basenet." in k for k in shared) and any(".attnnet." in k for k in shared)
    assert all(torch.equal(state[k], source[k]) for k in shared)
    assert prov.attributes_kept == (names[3], names[0], names[1], names[2])
    assert prov.attributes_new == ("category",)
    assert prov.attributes_revalued == (names[0],)
    assert prov.attributes_dropped == tuple(names[4:])
    assert prov.sha256 == sha256_file(ckpt) and prov.path == str(ckpt)
    # another architecture is refused, by name of the fields that differ
    with pytest.raises(CheckpointError, match="architecture differs.*attr_dim"):
        init_from(build_model("small", specs), ckpt)


def test_run_from_init_records_it_and_keeps_the_trunk(data, tmp_path, capsys):
    _, seven, _, ckpt = data
    best = run(seven, tmp_path / "ft", CFG, init=ckpt)
    source = read_checkpoint_file(ckpt)["state_dict"]
    history = json.loads((tmp_path / "ft" / "history.json").read_text())
    assert not any("start" in h for h in history), "an --init run has one start"
    for name in ("best_stage1.pt", "best.pt", "last.pt"):
        saved = read_checkpoint_file(tmp_path / "ft" / name)
        assert saved["init"]["sha256"] == sha256_file(ckpt)
        assert saved["init"]["attributes_new"] == ["category"]
        assert len(saved["init"]["attributes_kept"]) == 6
        trunk = [k for k in saved["state_dict"] if ".basenet." in k]
        assert trunk and all(torch.equal(saved["state_dict"][k], source[k]) for k in trunk)
    assert read_checkpoint_file(tmp_path / "ft" / "last.pt")["train_state"]["config"][
        "starts"] == 1
    assert json.loads((tmp_path / "ft" / "train_config.json").read_text())["init"][
        "path"] == str(ckpt)
    text = describe_checkpoint(best)
    assert f"init: {ckpt}" in text and "attributes new: category" in text
    from model.checkpoint import main as info
    assert info([str(best)]) == 0 and "attributes kept: " in capsys.readouterr().out


class _Stop(Exception):
    pass


class _StopAt(logging.Handler):
    def __init__(self, prefix: str):
        super().__init__(logging.INFO)
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            raise _Stop


def test_a_resumed_init_run_keeps_its_provenance(data, tmp_path):
    _, seven, _, ckpt = data
    cfg = replace(CFG, stage1=replace(CFG.stage1, epochs=2), stage2=replace(CFG.stage2, epochs=0))
    logger, stop = logging.getLogger("model.training.train"), _StopAt("stage 1 epoch 2/")
    logger.addHandler(stop)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(_Stop):
            run(seven, tmp_path / "r", cfg, init=ckpt)
    finally:
        logger.removeHandler(stop)
        logger.setLevel(level)
    last = tmp_path / "r" / "last.pt"
    stored = read_checkpoint_file(last)["train_state"]["config"]
    best = run(seven, tmp_path / "r", replace(cfg, starts=stored["starts"]), resume=last)
    assert read_checkpoint_file(best)["init"] == read_checkpoint_file(last)["init"]
    assert read_checkpoint_file(best)["init"]["sha256"] == sha256_file(ckpt)
    assert read_checkpoint_file(best)["training"]["epoch"] in (1, 2)


def cli(*argv: str):
    return config_from_args(build_parser().parse_args(["--data", "d", "--out", "o", *argv]))


def test_cli_takes_the_recipe_of_the_checkpoints_architecture(data, tmp_path, capsys):
    _, seven, _, ckpt = data
    cfg, variant = cli("--init", str(ckpt))
    assert cfg == TRAIN_CONFIGS["tiny"] and variant == "asen"
    assert cli("--init", str(ckpt), "--variant", "global")[0] == TRAIN_CONFIGS["tiny"]
    with pytest.raises(UsageError, match="is a 'tiny' network; --config cpu.*differs in"):
        cli("--init", str(ckpt), "--config", "cpu")
    with pytest.raises(UsageError, match="random starts"):
        cli("--init", str(ckpt), "--starts", "4")
    with pytest.raises(UsageError, match="--init with --resume"):
        cli("--init", str(ckpt), "--resume", str(ckpt))
    common = ["--data", str(seven), "--out", str(tmp_path / "o")]
    assert main([*common, "--init", str(ckpt), "--config", "small"]) == 2
    assert "differs in" in capsys.readouterr().err
    published = tmp_path / "published.pt"
    torch.save({"model": read_checkpoint_file(ckpt)["state_dict"]}, published)
    assert main([*common, "--init", str(published)]) == 1
    assert "needs a checkpoint of this project" in capsys.readouterr().err
    renamed = tmp_path / "renamed.pt"
    net = build_model(replace(get_config("tiny"), name="mine"), read_attributes(seven))
    save_checkpoint(net, renamed)
    with pytest.raises(UsageError, match="names no recipe"):
        cli("--init", str(renamed))


def test_cli_refuses_a_folder_without_attributes(tmp_path, capsys):
    """A clear one-line message and a non-zero exit, not a traceback."""
    (tmp_path / "empty").mkdir()
    code = main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
                 "--config", "tiny"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "no attributes.json" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
