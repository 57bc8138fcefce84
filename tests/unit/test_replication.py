"""One replication setting for every topic: WINDOWGATE_REPLICATION_FACTOR and its min ISR."""

from __future__ import annotations

import pytest

from services.common.settings import (
    Settings,
    SettingsError,
    min_insync_replicas,
    replication_from_env,
)
from services.common.topics import replication_configs
from services.window.config import WindowConfig


@pytest.mark.parametrize(("rf", "isr"), [(1, 1), (2, 2), (3, 2), (5, 2)])
def test_min_insync_is_two_copies_whenever_there_can_be_two(rf: int, isr: int) -> None:
    assert min_insync_replicas(rf) == isr
    assert replication_configs(rf) == {"min.insync.replicas": str(isr)}


def test_default_is_one_for_a_single_node_broker() -> None:
    assert Settings.from_env({}).replication_factor == 1
    assert replication_from_env({}) == 1


def test_the_setting_reaches_the_window_changelogs() -> None:
    settings = Settings.from_env({"WINDOWGATE_REPLICATION_FACTOR": "3"})
    window = WindowConfig.from_settings(settings)
    assert (settings.replication_factor, window.replication_factor) == (3, 3)
    assert window.changelog_configs == {"min.insync.replicas": "2"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "WINDOWGATE_REPLICATION_FACTOR must be between 1 and 32767, got 0"),
        ("three", "WINDOWGATE_REPLICATION_FACTOR must be a whole number, got 'three'"),
    ],
)
def test_bad_values_name_the_variable(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"WINDOWGATE_REPLICATION_FACTOR": value})
