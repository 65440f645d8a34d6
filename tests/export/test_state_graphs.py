"""The state pool's graphs shipped with the server are what export/state_graphs.py makes."""

from __future__ import annotations

from pathlib import Path

from distill_serve.export import state_graphs


def test_the_shipped_pool_graphs_are_the_ones_export_makes(tmp_path: Path) -> None:
    made = state_graphs.state_graphs()
    assert set(made) == {state_graphs.GATHER, state_graphs.SCATTER}
    for name, data in made.items():
        path = state_graphs.package_folder() / name
        assert path.read_bytes() == data, (
            f"{path} differs from what export/state_graphs.py makes: run "
            "python -m distill_serve.export.state_graphs"
        )
    assert state_graphs.main([str(tmp_path)]) == 0
    assert (tmp_path / state_graphs.GATHER).read_bytes() == made[state_graphs.GATHER]
