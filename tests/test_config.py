"""Config loading: overrides, one-line errors naming the key path, every recipe in configs/ is valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medtrans.config import Config, dump_config, load_config
from medtrans.engine.run import build_method
from medtrans.errors import MedtransError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.stem.startswith("benchmark_"))

BASE = {
    "data": {"root": "data/phantom", "sources": ["t1"], "target": "t2"},
    "backbone": {"name": "unet", "args": {"depth": 2, "width": 4}},
    "method": {"name": "regression"},
    "optim": {"steps": 10},
}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(path: Path, overrides: list[str] = ()) -> str:
    with pytest.raises(MedtransError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def test_defaults_filled_and_typed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.data.dims == "2d" and config.data.paired is True
    assert config.optim.lr == pytest.approx(2e-4) and config.optim.amp is False and config.optim.ema is None
    assert config.data.splits.train + config.data.splits.val + config.data.splits.test == pytest.approx(1)
    assert config.data.in_channels == 1 and config.data.spatial_dims == 2


def test_unknown_key_names_path_and_allowed_keys(tmp_path: Path) -> None:
    raw = {**BASE, "optim": {"steps": 10, "lrr": 0.1}}
    message = error_of(write(tmp_path, raw))
    assert "optim.lrr: unknown key" in message
    assert "lr, betas" in message  # the allowed keys under optim are listed


def test_wrong_type_names_path_and_value(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, BASE), ["optim.lr=fast"])
    assert "optim.lr" in message and '"fast"' in message and "number" in message


def test_bad_choice_lists_allowed_values(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, BASE), ["data.dims=4d"])
    assert "data.dims" in message and "'2d', '2.5d' or '3d'" in message


def test_unknown_method_lists_registered(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, BASE), ["method.name=regresion"])
    assert "method.name: 'regresion' is not a known method" in message
    assert "regression" in message.split("allowed values:")[1]


def test_unknown_component_argument_lists_the_signature(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, BASE), ["backbone.args.widht=8"])
    assert "backbone.args.widht: not an argument of backbone 'unet'" in message
    assert "depth, width" in message and "in_channels" not in message  # the engine fills channels in
    assert "method.args.lambda_l2" in error_of(write(tmp_path, BASE), ["method.args.lambda_l2=1"])


def test_paired_method_refuses_unpaired_data(tmp_path: Path) -> None:
    assert "data.paired: false, but method 'regression' learns from pairs" in error_of(
        write(tmp_path, BASE), ["data.paired=false"])


def test_steps_and_epochs_exclusive(tmp_path: Path) -> None:
    assert "optim: set exactly one of steps or epochs" in error_of(write(tmp_path, BASE), ["optim.epochs=2"])


def test_overrides_are_yaml_values(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), [
        "optim.lr=1.0e-3", "data.sources=[t1, pd]", "optim.ema=null", "optim.amp=true", "seed=7",
        "data.dims=2.5d", "data.context=2",
    ])
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.data.sources == ["t1", "pd"] and config.optim.amp is True and config.seed == 7
    assert config.data.in_channels == 2 * 5  # two sources, 2.5D stack of 2*2+1 slices


@pytest.mark.parametrize("override", ["optim.lr", "=3", "optim..lr=3", "optim.lr.x=1"])
def test_malformed_override(tmp_path: Path, override: str) -> None:
    message = error_of(write(tmp_path, BASE), [override])
    assert "override" in message or "optim.lr" in message


def test_dump_roundtrip(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), ["optim.schedule=cosine", "optim.warmup=3"])
    dumped = dump_config(config, tmp_path / "config.yaml")
    again = load_config(dumped)
    assert again == config
    assert again.training_hash() == config.training_hash()


def test_training_differences_ignore_length_and_logging(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    longer = load_config(write(tmp_path, BASE), ["optim.steps=99", "logging.every=1", "device=cpu"])
    changed = load_config(write(tmp_path, BASE), ["optim.lr=0.1", "backbone.args.width=8"])
    assert config.training_differences(longer) == []
    assert config.training_hash() == longer.training_hash()
    assert config.training_differences(changed) == ["backbone.args.width", "optim.lr"]
    assert config.training_hash() != changed.training_hash()


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_validates_and_builds(recipe: Path) -> None:
    config = load_config(recipe)
    assert isinstance(config, Config)
    method = build_method(config, init_weights=False)  # init_from runs (stage 1) are trained first
    assert set(method.groups) and sum(p.numel() for p in method.parameters()) > 0


def test_recipes_cover_the_promised_tasks() -> None:
    names = {p.stem for p in RECIPES}
    assert {"phantom_t1_t2_regression", "phantom_t1_t2_pix2pix", "phantom_t1_t2_cyclegan",
            "phantom_t1_ct_regression"} <= names
    assert any(load_config(p).data.dims == "3d" for p in RECIPES)


def test_validating_a_config_imports_only_the_modules_it_names() -> None:
    """One optional dependency that fails to import must not break configs that do not use it."""
    import subprocess
    import sys

    code = (
        "import sys, yaml\n"
        "from medtrans.config import validate_config\n"
        f"validate_config(yaml.safe_load({yaml.safe_dump(BASE)!r}))\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('medtrans.'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert {"medtrans.nets.unet", "medtrans.methods.regression"} <= loaded
    assert not loaded & {"medtrans.nets.resnet", "medtrans.methods.pix2pix", "medtrans.methods.cyclegan"}


def test_build_method_lets_a_bug_inside_a_constructor_propagate(tmp_path: Path) -> None:
    """Arguments are checked against the signature; a TypeError raised while constructing is a bug in the
    component (here: a width that is not a number reaches the network's layers), not 'rejected args'."""
    from medtrans.config import validate_config

    bad_value = validate_config({**BASE, "backbone": {"name": "unet", "args": {"depth": 2, "width": "four"}}})
    with pytest.raises(TypeError) as caught:
        build_method(bad_value)
    assert not isinstance(caught.value, MedtransError)
    good = build_method(validate_config(BASE))
    assert sum(p.numel() for p in good.parameters()) > 0


def test_amp_auto_means_bf16_only_where_it_is_native() -> None:
    import torch

    from medtrans.engine.predictor import resolve_amp

    cpu = torch.device("cpu")
    assert resolve_amp(True, cpu) is True and resolve_amp(False, cpu) is False
    # auto follows oneDNN's own probe of native bf16 (AVX512-BF16 / AMX) on this CPU
    assert resolve_amp("auto", cpu) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
