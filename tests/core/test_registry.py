from __future__ import annotations

import importlib.metadata
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import akidb_embed
from akidb_embed import (
    EmbeddingConfig,
    EmbeddingManager,
    MockEmbeddingProvider,
    available_providers,
    get_provider_class,
    get_provider_factory,
    providers,
    refresh_providers,
    register_provider,
    unregister_provider,
)
from akidb_embed.errors import (
    DuplicateProviderError,
    ProviderError,
    ProviderNotInstalledError,
    UnknownProviderError,
)


def make_dist(
    site: Path,
    dist: str,
    entry_points: dict[str, str],
    modules: dict[str, str],
    *,
    refresh: bool = True,
) -> None:
    """Lay out a real installed distribution (dist-info + modules) in *site*, then
    :func:`refresh_providers` unless told not to (entry points are read once)."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[akidb_embed.providers]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    if refresh:
        refresh_providers()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The suite's isolation (tests/conftest.py) restores the entry points read before.
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Groups passed to ``importlib.metadata.entry_points``, one item per call."""
    calls: list[str] = []
    real = importlib.metadata.entry_points

    def counting(**params: str) -> object:
        calls.append(params.get("group", ""))
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", counting)
    return calls


GOOD = """
    from akidb_embed import MockEmbeddingProvider

    class Good(MockEmbeddingProvider):
        pass
"""


def test_builtins_come_from_entry_points() -> None:
    rows = available_providers()
    assert rows["mock"].loadable
    assert rows["mock"].distribution == "akidb-embed"
    assert rows["mock"].version == akidb_embed.__version__
    assert get_provider_factory("mock") is MockEmbeddingProvider


def test_unknown_provider_lists_names_and_closest() -> None:
    with pytest.raises(UnknownProviderError) as info:
        get_provider_factory("mokc")
    msg = str(info.value)
    assert "'mokc'" in msg and "Did you mean 'mock'?" in msg and "mock" in info.value.available
    assert isinstance(info.value, LookupError)


def test_known_but_missing_provider_gives_install_command(site: Path) -> None:
    # 'mlx' is a known provider; pretend its distribution is installed but broken/missing
    make_dist(site, "akidb-embed-fakemlx", {"fakeprov": "missing_backend_mod:Provider"}, {})
    with pytest.raises(ProviderNotInstalledError) as info:
        get_provider_factory("fakeprov")
    assert "pip install" in str(info.value)
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value.__cause__, ImportError)


def test_known_provider_names_extra_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    # Known names (onnx, mlx) are in a table of install hints; a known name with no
    # installed entry point says which extra to install.
    monkeypatch.setitem(
        akidb_embed._registry._INSTALL_HINTS, "tpu", "pip install 'akidb-embed[tpu]'"
    )
    with pytest.raises(ProviderNotInstalledError, match=r"pip install 'akidb-embed\[tpu\]'"):
        get_provider_factory("tpu")
    with pytest.raises(ProviderNotInstalledError, match=r"akidb-embed\[tpu\]"):
        EmbeddingManager.from_config(EmbeddingConfig(provider="tpu"))


def test_missing_requirement_reported_without_import(site: Path) -> None:
    make_dist(
        site,
        "needs-thing",
        {"needy": "needy_mod:Needy"},
        {
            "needy_mod": GOOD
            + """
    Good.requires = ("surely_not_installed_module_xyz",)
    Needy = Good
    """
        },
    )
    rows = available_providers()
    assert not rows["needy"].loadable
    assert "surely_not_installed_module_xyz" in rows["needy"].reason
    assert rows["needy"].distribution == "needs-thing"
    with pytest.raises(ProviderNotInstalledError, match="pip install --upgrade 'needs-thing'"):
        get_provider_factory("needy")


def test_broken_plugin_does_not_hide_others(site: Path) -> None:
    make_dist(
        site,
        "broken-plugin",
        {"broken": "broken_mod:Provider"},
        {"broken_mod": "raise RuntimeError('boom at import')\n"},
    )
    make_dist(site, "good-plugin", {"good": "good_mod:Good"}, {"good_mod": GOOD})
    rows = available_providers()
    assert not rows["broken"].loadable and "boom at import" in rows["broken"].reason
    assert rows["good"].loadable and rows["mock"].loadable
    with pytest.raises(ProviderError, match="broken"):
        get_provider_factory("broken")
    with EmbeddingManager.from_config(EmbeddingConfig(provider="good")) as manager:
        assert manager.embed(["x"]).shape == (1, 384)


def test_duplicate_entry_point_names_both(site: Path) -> None:
    make_dist(site, "plugin-a", {"twin": "twin_a:Good"}, {"twin_a": GOOD})
    make_dist(site, "plugin-b", {"twin": "twin_b:Good"}, {"twin_b": GOOD})
    rows = available_providers()
    assert not rows["twin"].loadable
    assert "plugin-a" in rows["twin"].reason and "plugin-b" in rows["twin"].reason
    with pytest.raises(DuplicateProviderError) as info:
        get_provider_factory("twin")
    assert "twin_a:Good" in str(info.value) and "twin_b:Good" in str(info.value)
    assert rows["mock"].loadable


def test_entry_points_are_read_once(count_reads: list[str]) -> None:
    refresh_providers()
    assert count_reads == ["akidb_embed.providers"]
    for _ in range(3):
        get_provider_factory("mock")
        available_providers()
        providers()
        with pytest.raises(UnknownProviderError):
            get_provider_factory("nope")
        with pytest.raises(DuplicateProviderError):
            register_provider("mock", MockEmbeddingProvider)
    assert count_reads == ["akidb_embed.providers"]


def test_first_read_is_thread_safe(count_reads: list[str]) -> None:
    akidb_embed._registry._discovered = None  # as in a fresh process
    barrier = threading.Barrier(8)
    found: list[object] = []

    def look_up() -> None:
        barrier.wait()
        found.append(get_provider_factory("mock"))

    threads = [threading.Thread(target=look_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [MockEmbeddingProvider] * 8
    assert count_reads == ["akidb_embed.providers"]


def test_refresh_picks_up_an_installed_plugin(site: Path) -> None:
    assert "late" not in providers()  # the first read
    make_dist(site, "late-plugin", {"late": "late_mod:Good"}, {"late_mod": GOOD}, refresh=False)
    assert "late" not in providers()  # installed after the first read: not seen yet
    with pytest.raises(UnknownProviderError):
        get_provider_factory("late")
    refresh_providers()
    assert providers()["late"] == "late_mod:Good (from late-plugin)"
    assert get_provider_factory("late").__name__ == "Good"


def test_refresh_forgets_a_removed_plugin(site: Path) -> None:
    make_dist(site, "gone-plugin", {"gone": "gone_mod:Good"}, {"gone_mod": GOOD})
    assert "gone" in providers()
    sys.path.remove(str(site))  # uninstalled (the site fixture's monkeypatch restores sys.path)
    refresh_providers()
    assert "gone" not in providers()


def test_refresh_keeps_registrations() -> None:
    register_provider("kept", MockEmbeddingProvider)
    refresh_providers()
    assert get_provider_factory("kept") is MockEmbeddingProvider


def test_providers_view_is_read_only_and_imports_nothing(site: Path) -> None:
    make_dist(site, "view-plugin", {"viewed": "viewed_mod:Good"}, {"viewed_mod": GOOD})
    register_provider("inline", MockEmbeddingProvider)
    view = providers()
    assert view["mock"] == "akidb_embed.mock:MockEmbeddingProvider (from akidb-embed)"
    assert view["viewed"] == "viewed_mod:Good (from view-plugin)"
    assert view["inline"] == "akidb_embed.mock:MockEmbeddingProvider (registered)"
    assert "viewed_mod" not in sys.modules
    with pytest.raises(TypeError):
        view["mock"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        del view["mock"]  # type: ignore[attr-defined]
    unregister_provider("inline")
    assert "inline" in view and "inline" not in providers()  # a snapshot


def test_providers_view_names_both_claimants(site: Path) -> None:
    make_dist(site, "claim-a", {"claimed": "claim_a:Good"}, {"claim_a": GOOD})
    make_dist(site, "claim-b", {"claimed": "claim_b:Good"}, {"claim_b": GOOD})
    assert "claim-a" in providers()["claimed"] and "claim-b" in providers()["claimed"]


def test_get_provider_class_is_a_deprecated_alias() -> None:
    with pytest.deprecated_call(match="get_provider_factory"):
        assert get_provider_class("mock") is MockEmbeddingProvider
    with pytest.deprecated_call(), pytest.raises(UnknownProviderError):
        get_provider_class("mokc")


def test_discovery_is_lazy(site: Path) -> None:
    make_dist(site, "lazy-plugin", {"lazy": "lazy_mod:Good"}, {"lazy_mod": GOOD})
    assert "lazy" in providers()
    assert "lazy_mod" not in sys.modules
    get_provider_factory("lazy")
    assert "lazy_mod" in sys.modules


def test_register_provider_in_process() -> None:
    calls = []

    def factory(config: EmbeddingConfig) -> MockEmbeddingProvider:
        calls.append(config)
        return MockEmbeddingProvider(dimension=8)

    register_provider("notebook", factory)
    assert available_providers()["notebook"].source == "registered"
    with EmbeddingManager.from_config(EmbeddingConfig(provider="notebook")) as manager:
        assert manager.dimension == 8
    assert calls[0].provider == "notebook"
    with pytest.raises(DuplicateProviderError, match="notebook"):
        register_provider("notebook", factory)
    register_provider("notebook", factory, replace=True)
    unregister_provider("notebook")
    with pytest.raises(UnknownProviderError):
        get_provider_factory("notebook")


def test_register_cannot_shadow_entry_point_silently() -> None:
    with pytest.raises(DuplicateProviderError, match=r"akidb_embed\.mock:MockEmbeddingProvider"):
        register_provider("mock", MockEmbeddingProvider)


def test_registration_is_isolated_between_tests_part1() -> None:
    register_provider("leaky", MockEmbeddingProvider)


def test_registration_is_isolated_between_tests_part2() -> None:
    assert "leaky" not in available_providers()


def test_register_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        register_provider("x", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        register_provider("", MockEmbeddingProvider)


def test_factory_failure_names_provider() -> None:
    def explode(config: EmbeddingConfig) -> MockEmbeddingProvider:
        raise OSError("model file unreadable")

    register_provider("explodes", explode)
    with pytest.raises(ProviderError, match=r"'explodes'.*model file unreadable"):
        EmbeddingManager.from_config(EmbeddingConfig(provider="explodes"))


def test_factory_import_error_becomes_not_installed() -> None:
    def needs_dep(config: EmbeddingConfig) -> MockEmbeddingProvider:
        import surely_not_installed_module_xyz  # noqa: F401

        raise AssertionError("unreachable")

    register_provider("needsdep", needs_dep)
    with pytest.raises(ProviderNotInstalledError) as info:
        EmbeddingManager.from_config(EmbeddingConfig(provider="needsdep"))
    assert isinstance(info.value.__cause__, ImportError)


def test_factory_returning_non_provider() -> None:
    register_provider("weird", lambda config: object())
    with pytest.raises(ProviderError, match="no embed_batch"):
        EmbeddingManager.from_config(EmbeddingConfig(provider="weird"))
