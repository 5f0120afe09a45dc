"""The `interp` command line: help, site tables, errors."""

import subprocess
import sys

import pytest

from interp_core.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "sites" in out and "demo" in out


@pytest.mark.parametrize("spec,expected", [("torchvision:resnet18", ["layer1.0.relu#1", "layer4.1", "logits"]),
                                           ("timm:vit_tiny_patch16_224", ["blocks.11.attn.z", "blocks.0.resid_post"])])
def test_sites_prints_the_site_table(capsys, spec, expected):
    assert main(["sites", spec]) == 0
    out = capsys.readouterr().out
    for name in expected:
        assert name in out
    assert "batch,feature,pos,pos" in out or "batch,pos,head,feature" in out


def test_sites_match_filters(capsys):
    assert main(["sites", "timm:vit_tiny_patch16_224", "--match", "blocks.3.attn.*"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("blocks.")]
    assert lines and all(ln.startswith("blocks.3.attn.") for ln in lines)


def test_bad_model_spec_is_a_clear_error(capsys):
    assert main(["sites", "resnet18"]) == 2
    assert "model spec 'resnet18' is not understood" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "interp_core.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "interp" in out.stdout
