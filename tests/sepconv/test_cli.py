"""The CLI as a user drives it: in-process via main(argv), asserting exit codes and output."""

import json

import numpy as np
import pytest

from sepconv.cli import EXIT_ERROR, main

SMALL = "mobilenet_v2:0.35@64"


@pytest.fixture(scope="module")
def compiled_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mbv2.sepconv"
    assert main(["compile", SMALL, "--target", "x86_64-linux-gnu", "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("cmd", ["models", "compile", "validate", "run"])
def test_help_for_each_command(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: sepconv " + cmd in capsys.readouterr().out


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for family in (
        "mobilenet_v1",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "efficientnet_b7",
        "shufflenet_v2",
    ):
        assert family in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    v2 = next(r for r in rows if r["name"] == "mobilenet_v2")
    assert v2["params"] == 3_504_872


def test_compile_reports_tasks_and_writes_artifact(compiled_small, capsys):
    assert (compiled_small / "manifest.json").is_file()
    build = json.loads((compiled_small / "manifest.json").read_text())["build"]
    assert build["rule_failures"] == []  # every function took the first rule that accepts it


def test_validate_passes(compiled_small, capsys):
    assert main(["validate", str(compiled_small)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PASS") and "max abs error" in out


def test_run_random_and_npy_input(compiled_small, tmp_path, capsys):
    assert main(["run", str(compiled_small), "--runs", "5", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "top-5 [0]:" in out and "latency: median" in out
    x = np.random.default_rng(0).standard_normal((3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "img.npy", x)
    assert main(["run", str(compiled_small), "-i", str(tmp_path / "img.npy"), "--runs", "3"]) == 0
    assert "img.npy" in capsys.readouterr().out


def test_existing_output_refused_without_force(compiled_small, capsys):
    assert main(["compile", SMALL, "-o", str(compiled_small)]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "--force" in err[-1]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["compile", "mobilenet_v9"], "mobilenet_v9"),
        (["compile", "mobilenet_v2", "--target", "riscv64-linux-gnu"], "x86_64-linux-gnu"),
        (["validate", "/nonexistent/x.sepconv"], "no artifact"),
        (["run", "/nonexistent/x.sepconv"], "no artifact"),
    ],
)
def test_bad_input_is_one_line_error(argv, needle, capsys):
    assert main(argv) == EXIT_ERROR
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1].startswith("error:") and needle in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_wrong_npy_shape_is_an_error(compiled_small, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((3, 32, 32), np.float32))
    assert main(["run", str(compiled_small), "-i", str(tmp_path / "bad.npy")]) == EXIT_ERROR
    assert "shape" in capsys.readouterr().err


def test_compile_with_and_without_sepconv_ops(tmp_path, capsys):
    """The switch users bisect with: both builds validate; the manifest says which was used."""
    with_ops, without = tmp_path / "ops.sepconv", tmp_path / "plain.sepconv"
    assert main(["compile", "mobilenet_v1:0.25@32", "-o", str(with_ops)]) == 0
    assert "fused dw→pw" in capsys.readouterr().out
    assert main(["compile", "mobilenet_v1:0.25@32", "-o", str(without), "--no-sepconv-ops"]) == 0
    assert "sepconv ops" not in capsys.readouterr().out
    ops = json.loads((with_ops / "manifest.json").read_text())["build"]["sepconv_ops"]
    assert ops["fused_dw_pw"] == 13
    assert json.loads((without / "manifest.json").read_text())["build"]["sepconv_ops"] is None
    for art in (with_ops, without):
        assert main(["validate", str(art)]) == 0


def test_compile_reports_rules_that_raised(tmp_path, capsys, monkeypatch):
    """A rule that raises leaves its function to a later, usually slower, rule (ShuffleNetV2
    int8 once ran 4× slower so, with only log lines to say it): the summary and the manifest
    say so."""
    from sepconv.schedules import rule_list

    class Broken:
        name = "Broken"

        def apply(self, func, target, tunable):
            raise RuntimeError("deliberately broken rule")

    rules = rule_list.cpu_rules
    monkeypatch.setattr(rule_list, "cpu_rules", lambda target: [Broken(), *rules(target)])
    out = tmp_path / "v1.sepconv"
    assert main(["compile", "mobilenet_v1:0.25@32", "-o", str(out), "--no-tune-logs"]) == 0
    printed = capsys.readouterr().out
    failures = json.loads((out / "manifest.json").read_text())["build"]["rule_failures"]
    assert failures and all(f["rule"] == "Broken" for f in failures)
    assert all("deliberately broken" in f["error"] for f in failures)
    assert f"warning: {len(failures)} schedule rule(s) raised" in printed
    assert main(["validate", str(out)]) == 0  # the later rules' schedules are still correct
