"""``medtrans info RUN`` prints each network's parameter count (from the run's config.yaml)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

import medtrans.cli.info  # noqa: F401  (registers the command)
from medtrans.cli import app
from medtrans.nets import build_backbone, build_discriminator

CONFIGS = Path(__file__).parents[2] / "configs"


def _count(net) -> int:
    return sum(p.numel() for p in net.parameters())


def test_info_on_a_run_folder_counts_the_parameters_of_each_network(tmp_path):
    shutil.copy(CONFIGS / "phantom_t1_t2_pix2pix_resvit.yaml", tmp_path / "config.yaml")
    result = CliRunner().invoke(app, ["info", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    backbone = {"name": config["backbone"]["name"], **config["backbone"]["args"]}
    discriminator = {"name": config["discriminator"]["name"], **config["discriminator"]["args"]}
    generator, critic = build_backbone(backbone, 2, 1, 1), build_discriminator(discriminator, 2, 2)
    assert counts == {
        "generator": {"class": "ResViT", "parameters": _count(generator)},
        "discriminator": {"class": "PatchGAN", "parameters": _count(critic)},
    }
    table = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert table.exit_code == 0 and "ResViT" in table.output
    assert f"{counts['generator']['parameters'] + counts['discriminator']['parameters']:,}" in table.output
