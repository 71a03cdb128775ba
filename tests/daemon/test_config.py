"""Configuration validation: `config check` refuses exactly what start-up refuses (issue 15 item 1)."""
import subprocess
from pathlib import Path

import pytest
from support import IONSTREAM, free_port

from ionstream.config import ConfigError, apply_overrides, from_dict, load

# (TOML text, a fragment the problem must contain): every case issue 15 item 1 lists, and more.
REFUSED = [
    ('[source]\nurl = "serial:///dev/ptmx?baud=fast"\n', "option baud=fast is not an integer"),
    ('[source]\nurl = "serial:///dev/ptmx?baudrate=921600"\n', "unknown option(s) baudrate"),
    ('[source]\nurl = "sim://?speed=0"\n', "unknown option(s) speed"),
    ('[source]\nurl = "sim://?rate=-5"\n', "rate=-5 must be >= 0"),
    ('[source]\nurl = "tcp://127.0.0.1"\n', "no port"),
    ('[source]\nurl = "tcp://127.0.0.1:99999"\n', "port 99999 is not 1..65535"),
    ('[source]\nurl = "serial://"\n', "no device path"),
    ('[publish]\nendpoint = "127.0.0.1:5556"\n', "publish.endpoint: expected an endpoint like tcp://"),
    ('[publish]\nendpoint = "tcp://0.0.0.0:5556"\n', "publish.allow_remote = true"),
    ('[publish]\ncontrol = "tcp://0.0.0.0:5557"\n', "publish.control: refusing to bind plain TCP"),
    ('[publish]\ncontrol = "tcp://127.0.0.1:70000"\n', "publish.control: tcp://127.0.0.1:70000 has port 70000"),
    ('[publish]\ncurve_server_secret = "server.key_secret"\n', "CURVE needs both"),
]


def _run(args, cwd, timeout=60):
    return subprocess.run(IONSTREAM + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("toml, fragment", REFUSED, ids=[f[1][:30] for f in REFUSED])
def test_check_refuses_what_startup_refuses(tmp_path, toml, fragment):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    check = _run(["config", "check", str(cfg)], tmp_path)
    assert check.returncode == 2 and fragment in check.stderr, check.stderr
    assert "ok" not in check.stdout
    # the daemon, given the same file, refuses it with the same words and starts nothing
    run = _run(["run", "-c", str(cfg), "--backend", "none", "--duration", "5s"], tmp_path)
    assert run.returncode == 2 and fragment in run.stderr, run.stderr
    assert "Traceback" not in run.stderr + check.stderr
    assert "running:" not in run.stderr


def test_a_file_that_checks_ok_starts(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[source]\nurl = "sim://?rate=50&samples=1024"\n[inference]\nbackend = "none"\n'
                   f'[publish]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
                   f'control = "tcp://127.0.0.1:{free_port()}"\n')
    check = _run(["config", "check", str(cfg)], tmp_path)
    assert check.returncode == 0 and check.stdout.strip().endswith(": ok"), check.stderr
    run = _run(["run", "-c", str(cfg), "--duration", "1s"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "running:" in run.stderr and "stopped:" in run.stderr


class TestMessages:
    def _problems(self, doc):
        with pytest.raises(ConfigError) as exc:
            from_dict(doc)
        return exc.value.problems

    def test_values_in_toml_spelling(self):
        problems = self._problems({"ring": {"slots": True}, "capture": {"compress": "yes"}})
        assert "ring.slots: expected an integer, got true" in problems
        assert 'capture.compress: expected true or false, got "yes"' in problems
        assert not any("True" in p or "'yes'" in p for p in problems)

    def test_choices_quoted_as_toml(self):
        (problem,) = self._problems({"ring": {"policy": "fast"}})
        assert problem == 'ring.policy: expected one of "auto", "drop-oldest", "block", got "fast"'

    def test_no_empty_names(self):
        (problem,) = self._problems({"source": {"url": "serial://"}})
        assert "  " not in problem and "no device path" in problem

    def test_every_problem_at_once(self):
        problems = self._problems({"ring": {"slots": "x"}, "dsp": {"workers": -1},
                                   "source": {"url": "tcp://h"}, "publish": {"endpoint": "x"}})
        assert len(problems) == 4


class TestListsAndOptionalFields:
    """Review item 10: lists are validated per element; ``int | None`` fields work."""

    def test_list_elements_checked(self):
        with pytest.raises(ConfigError) as exc:
            from_dict({"inference": {"gpus": ["a", -1, 1]}})
        assert exc.value.problems == ['inference.gpus[0]: expected an integer, got "a"',
                                      "inference.gpus[1]: must be >= 0, got -1"]

    def test_nested_list_elements_checked_and_converted(self):
        with pytest.raises(ConfigError) as exc:
            from_dict({"dsp": {"xic": [[100, "x"]]}})
        assert exc.value.problems == ['dsp.xic[0][1]: expected a number, got "x"']
        config = from_dict({"dsp": {"xic": [[100, 101.5]]}})
        assert config.dsp.xic == [[100.0, 101.5]] and isinstance(config.dsp.xic[0][0], float)

    def test_xic_window_rule(self):
        with pytest.raises(ConfigError, match=r"dsp.xic\[0\]: expected \[mz_low, mz_high\]"):
            from_dict({"dsp": {"xic": [[200, 100]]}})

    def test_optional_int(self):
        from ionstream.config import _check_type

        problems: list[str] = []
        assert _check_type("k", 3, int | None, {"min": 1}, problems) == 3 and not problems
        assert _check_type("k", 0, int | None, {"min": 1}, problems) is None
        assert _check_type("k", "3", int | None, {}, problems) is None
        assert problems == ["k: must be >= 1, got 0", 'k: expected an integer, got "3"']

    def test_overrides_validated_like_the_file(self):
        config = load(None)
        with pytest.raises(ConfigError, match="publish.endpoint: refusing to bind plain TCP"):
            apply_overrides(config, {"publish.endpoint": "tcp://0.0.0.0:5556"})

    def test_allow_remote_permits_any_address(self):
        config = from_dict({"publish": {"endpoint": "tcp://0.0.0.0:5556", "allow_remote": True}})
        assert config.publish.endpoint == "tcp://0.0.0.0:5556"


class TestResolveCapturePath:
    """Issue 15 item 3: one rule for relative capture paths."""

    def test_plain_name_goes_under_capture_dir(self):
        from ionstream.config import resolve_capture_path

        assert resolve_capture_path("run1.isc", "captures") == Path("captures/run1.isc")

    def test_directory_parts_also_go_under_capture_dir(self):
        from ionstream.config import resolve_capture_path

        assert resolve_capture_path("2024-05/run1.isc", "/data/caps") == Path("/data/caps/2024-05/run1.isc")
        assert resolve_capture_path("captures/run1.isc", "captures") == Path("captures/captures/run1.isc")

    def test_absolute_is_used_as_given(self, tmp_path):
        from ionstream.config import resolve_capture_path

        assert resolve_capture_path(tmp_path / "x.isc", "captures") == tmp_path / "x.isc"
        assert resolve_capture_path("~/x.isc", "captures") == Path.home() / "x.isc"
