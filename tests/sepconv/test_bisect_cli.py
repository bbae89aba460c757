"""``sepconv validate --bisect``: a zoo model with one wrong pointwise kernel planted."""

import json

from sepconv.cli import EXIT_VALIDATION_FAILED, main
from tests.compiler.planted_fault import block_channels, block_names, plant

SMALL = "mobilenet_v2:0.35@32"


def _expansion_to_96(func) -> bool:
    """The stand-alone pointwise (expansion) conv to 96 channels: in the middle of the model."""
    names = block_names(func)
    return (
        "sepconv_pw" in names
        and "sepconv_dw" not in names
        and (block_channels(func, "sepconv_pw") == 96)
    )


def test_validate_bisect_json_names_the_planted_kernel(tmp_path, monkeypatch, capsys):
    fault = plant(monkeypatch, _expansion_to_96, "sepconv_pw")
    art = tmp_path / "mbv2.sepconv"
    assert main(["compile", SMALL, "-o", str(art), "--no-tune-logs"]) == 0
    assert fault.planted == 1
    capsys.readouterr()
    rc = main(["validate", str(art), "--bisect", "--json", "--inputs", "1"])
    assert rc == EXIT_VALIDATION_FAILED
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False
    b = report["bisect"]
    d = b["first_divergence"]
    assert d["origin"] == "sepconv" and d["op_kind"].startswith("sepconv_pw")
    assert "sepconv_pw" in d["function"] and d["shape"] == [1, 4, 4, 96]
    assert d["max_abs_error"] > 100 * d["tolerance"]
    # Every function before it agreed, and the one feeding it was matched and in tolerance.
    assert all(p["status"] == "ok" for p in b["points"][: d["index"]])
    assert len(b["before"]) == 1 and b["before"][0]["status"] == "ok"
    assert b["before"][0]["shape"] == [1, 4, 4, 16] and b["reproduces"] is True
