"""Experiment configs: validation names the offending field; ``--set`` overrides.

References: the field paths and values a user wrote (each error must name them), and the
YAML meaning of an override's value (``1.05`` a float, ``true`` a bool, ``[1, 2]`` a list).
"""

from pathlib import Path

import pytest

from ensda.config import ConfigError, apply_overrides, flatten, load, parse_override, validate

REPO = Path(__file__).resolve().parents[1]


def error_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        validate(data)
    return str(info.value)


def test_defaults_are_valid():
    cfg = validate({})
    assert cfg.testbed.n == 40 and cfg.obs.every == 1 and cfg.burn_in < cfg.cycles


def test_shipped_config_loads():
    cfg = load(REPO / "experiments" / "configs" / "l96.yaml")
    assert cfg.testbed.n == 40 and cfg.testbed.forcing == 8.0 and cfg.testbed.dt == 0.05
    assert cfg.obs.r_std == 1.0


def test_unknown_key_is_named():
    msg = error_of({"obs": {"densty": 0.5}})
    assert "obs.densty" in msg
    msg = error_of({"testbed": {"n": 40, "forcng": 8.0}})
    assert "testbed.forcng" in msg
    assert "ensmble" in error_of({"ensmble": {"size": 4}})


@pytest.mark.parametrize("density", [0.0, -0.2, 1.5])
def test_density_outside_unit_interval_is_named(density):
    assert "obs.density" in error_of({"obs": {"density": density}})


def test_density_one_is_allowed():
    assert validate({"obs": {"density": 1.0}}).obs.density == 1.0


def test_ensemble_of_one_refused_for_ensemble_methods_only():
    msg = error_of({"ensemble": {"size": 1}, "method": "enkf"})
    assert "ensemble.size" in msg and "enkf" in msg
    cfg = validate({"ensemble": {"size": 1}, "method": "3dvar"})
    assert cfg.members_for("3dvar") == 1


def test_unknown_method_lists_known_methods():
    msg = error_of({"method": "kalman"})
    assert "kalman" in msg
    for known in ("3dvar", "enkf", "etkf", "letkf", "oi"):
        assert known in msg


@pytest.mark.parametrize(
    "data,field",
    [
        ({"cycles": "many"}, "cycles"),
        ({"obs": {"r_std": "big"}}, "obs.r_std"),
        ({"testbed": {"n": 4.5}}, "testbed.n"),
        ({"ensemble": {"size": [3]}}, "ensemble.size"),
        ({"obs": {"operator": "cube"}}, "obs.operator"),
        ({"testbed": {"dt": 0.0}}, "testbed.dt"),
    ],
)
def test_wrong_type_or_value_is_named(data, field):
    assert field in error_of(data)


@pytest.mark.parametrize("burn_in,cycles", [(10, 10), (20, 10)])
def test_burn_in_must_be_below_cycles(burn_in, cycles):
    msg = error_of({"burn_in": burn_in, "cycles": cycles})
    assert "burn_in" in msg and str(cycles) in msg


def test_two_networks_at_once_are_refused():
    msg = error_of({"obs": {"every": 2, "density": 0.5}})
    assert "every" in msg and "density" in msg


def test_method_settings_are_validated_by_name():
    msg = error_of({"method": "letkf", "assimilator": {"radiuss": 3.0}})
    assert "radiuss" in msg and "letkf" in msg
    msg = error_of({"methods": {"3dvar": {"scale": "large"}}})
    assert "scale" in msg and "3dvar" in msg
    msg = error_of({"method": "enkf", "assimilator": {"inflation": 0.9}})
    assert "inflation" in msg
    msg = error_of({"method": "etkf", "assimilator": {"rtps": 1.5}})
    assert "rtps" in msg


def test_method_settings_merge_tuned_defaults_and_overrides():
    cfg = validate(
        {
            "method": "letkf",
            "methods": {"letkf": {"radius": 3.0, "inflation": 1.02}, "enkf": {"inflation": 1.06}},
            "assimilator": {"inflation": 1.1},
        }
    )
    letkf = cfg.method_settings("letkf")
    assert letkf["radius"] == 3.0 and letkf["inflation"] == 1.1 and letkf["rtps"] == 0.0
    # the overrides apply to the method being run only
    assert cfg.method_settings("enkf")["inflation"] == 1.06


def test_parse_override_parses_yaml_values():
    assert parse_override("assimilator.inflation=1.05") == (["assimilator", "inflation"], 1.05)
    assert parse_override("obs.redraw=true") == (["obs", "redraw"], True)
    assert parse_override("obs.sites=[1, 5, 9]") == (["obs", "sites"], [1, 5, 9])
    assert parse_override("name=a=b") == (["name"], "a=b")
    assert parse_override("obs.density=") == (["obs", "density"], None)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("obs.density")
    with pytest.raises(ConfigError, match="empty"):
        parse_override("obs..density=1")


def test_apply_overrides_sets_nested_keys_without_mutating():
    data = {"obs": {"every": 1}, "cycles": 100}
    out = apply_overrides(
        data, ["obs.r_std=0.5", "assimilator.radius=3", "cycles=200", "testbed.n=20"]
    )
    assert out == {
        "obs": {"every": 1, "r_std": 0.5},
        "cycles": 200,
        "assimilator": {"radius": 3},
        "testbed": {"n": 20},
    }
    assert data == {"obs": {"every": 1}, "cycles": 100}
    with pytest.raises(ConfigError, match="cycles"):
        apply_overrides(data, ["cycles.x=1"])


def test_load_with_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: t\ncycles: 50\nburn_in: 5\nobs:\n  r_std: 2.0\nmethod: etkf\n")
    cfg = load(
        path,
        ["obs.density=0.5", "obs.redraw=true", "assimilator.inflation=1.05", "ensemble.size=8"],
    )
    assert cfg.obs.density == 0.5 and cfg.obs.redraw is True and cfg.obs.r_std == 2.0
    assert cfg.method_settings("etkf")["inflation"] == 1.05
    assert cfg.ensemble.size == 8
    # a bad override is named like a bad file entry
    with pytest.raises(ConfigError, match="obs.densty"):
        load(path, ["obs.densty=0.5"])
    with pytest.raises(ConfigError, match="burn_in"):
        load(path, ["burn_in=50"])


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("obs: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML"):
        load(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(listy)


def test_flatten_gives_dotted_keys():
    cfg = validate({"obs": {"density": 0.25}, "assimilator": {"radius": 3.0}})
    flat = flatten(cfg)
    assert flat["obs.density"] == 0.25
    assert flat["testbed.n"] == 40
    assert flat["assimilator.radius"] == 3.0
    assert flat["methods"] == {}


@pytest.mark.parametrize(
    "path", sorted((REPO / "experiments" / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_config_loads_with_valid_method_settings(path):
    """Every config under experiments/configs validates, with every method's settings and,
    for a sweep, a non-empty grid or trial budget."""
    cfg = load(path)
    for method in cfg.methods:
        cfg.method_settings(method)
    if cfg.sweep is not None and cfg.sweep.sampler == "grid":
        assert cfg.sweep.grid_size() >= 1
