from __future__ import annotations

import math

import pytest

from streamer.config import StreamConfig
from streamer.errors import ConfigError


@pytest.mark.parametrize("field, value", [
    ("step", 0), ("step", -1), ("step", math.nan), ("step", "fast"), ("step", True),
    ("duration", 0.5), ("latency", 0.1), ("latency", 100), ("tau_active", 1.5),
    ("rho_update", -0.1), ("delta_new", 3.0), ("max_speakers", 0), ("max_speakers", 2.5),
    ("min_speakers", 0), ("num_speakers", 0), ("min_duration_on", -1),
    ("min_duration_off", math.inf), ("speech_threshold", 0.0), ("gamma", -1), ("beta", 1000),
])
def test_a_bad_value_raises_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        StreamConfig(**{field: value})


def test_errors_are_config_errors():
    with pytest.raises(ConfigError):
        StreamConfig(step=-1)


def test_fields_are_checked_against_each_other():
    with pytest.raises(ValueError, match="min_speakers"):
        StreamConfig(min_speakers=5, max_speakers=2)
    with pytest.raises(ValueError, match="latency"):
        StreamConfig(duration=5.0, latency=6.0)
    with pytest.raises(ValueError, match="step"):
        StreamConfig(duration=2.0, step=3.0)
    with pytest.raises(ValueError, match="latency"):
        StreamConfig(latency=6.0).resolve(5.0, 0.5, 0.5)


def test_num_speakers_sets_both_bounds():
    config = StreamConfig(num_speakers=3)
    assert (config.min_speakers, config.max_speakers) == (3, 3)


def test_from_dict_rejects_unknown_fields_and_non_objects():
    assert StreamConfig.from_dict({"latency": 2}).latency == 2.0
    with pytest.raises(ValueError, match="unknown config field.*colour"):
        StreamConfig.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="object"):
        StreamConfig.from_dict([1, 2])


def test_resolve_fills_model_defaults_and_keeps_overrides():
    resolved = StreamConfig().resolve(10.0, 0.7, 0.3)
    assert (resolved.duration, resolved.latency, resolved.delta_new,
            resolved.speech_threshold) == (10.0, 2.0, 0.7, 0.3)
    custom = StreamConfig(delta_new=0.2, latency=3.0).resolve(10.0, 0.7, 0.3)
    assert (custom.delta_new, custom.latency) == (0.2, 3.0)


def test_file_mode_decides_after_the_whole_buffer_unless_a_latency_is_given():
    assert StreamConfig().resolve(10.0, 0.7, 0.3, file_mode=True).latency == 10.0
    assert StreamConfig(duration=6.0).resolve(10.0, 0.7, 0.3, file_mode=True).latency == 6.0
    assert StreamConfig(latency=3.0).resolve(10.0, 0.7, 0.3, file_mode=True).latency == 3.0
