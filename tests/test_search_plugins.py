"""A scorer and a strategy added the way a built-in one is: one new module and one registry
entry each, then run through `mergekit-expo search` like any other. The dummy scorer reads
the α the engine's weights hold back from them; the dummy strategy scores every other α of the
grid on the whole dev set."""

import json

import pytest
import torch

from conftest import invoke
from mergekit_expo.search.registry import SCORERS, STRATEGIES, Entry

PARTS = '''
from safetensors.torch import load_file

from mergekit_expo.search.rows import candidate_row
from mergekit_expo.search.scoring import Score, Scorer
from mergekit_expo.search.strategies.base import Strategy, Unit

SFT = load_file({sft!r})["model.embed_tokens.weight"].double()
ALIGNED = load_file({aligned!r})["model.embed_tokens.weight"].double()


class AlphaReader(Scorer):
    """Scores dev row i as -(α - 0.4)² + i / 100, α read back from the engine's weights."""

    name = "alpha-reader"

    @classmethod
    def from_options(cls, spec, **_):
        return cls()

    def race_rows(self, engine):
        return 20

    def race_refusal(self):
        return None

    def __call__(self, engine, progress=None, *, rows=None):
        delta = ALIGNED - SFT
        weights = engine.model.model.embed_tokens.weight.detach().double()
        alpha = float(((weights - ALIGNED) * delta).sum() / (delta * delta).sum())
        values = [-((alpha - 0.4) ** 2) + i / 100 for i in (range(20) if rows is None else rows)]
        return Score(value=sum(values) / len(values), n=len(values), values=values if rows else None)


class EveryOther(Strategy):
    """α = 0 and every other α of the grid, each on the whole dev set."""

    name = "every-other"

    def start(self):
        return [self.reference(), *(Unit({{"alpha": alpha}}) for alpha in self.setup.grid[::2])]

    def report(self, scored):
        return self.sorted_rows([candidate_row([unit]) for unit in scored]), None
'''


@pytest.fixture
def plugins(pair_factory, tmp_path, monkeypatch):
    sft, aligned = pair_factory(dtype=torch.float32, delta_scale=0.3)
    installed = tmp_path / "site"  # as a package a user installs: outside the working folder
    installed.mkdir()
    (installed / "dummy_parts.py").write_text(PARTS.format(sft=str(sft / "model.safetensors"),
                                                           aligned=str(aligned / "model.safetensors")))
    monkeypatch.syspath_prepend(str(installed))
    # one registry line each, as for a built-in one (restored after the test)
    monkeypatch.setattr(SCORERS, "entries", list(SCORERS.entries))
    monkeypatch.setattr(STRATEGIES, "entries", list(STRATEGIES.entries))
    SCORERS.register(Entry("alpha-reader", "dummy_parts:AlphaReader", "reads α back", frozenset({"rows"})))
    STRATEGIES.register(Entry("every-other", "dummy_parts:EveryOther", "α = 0 and every other α",
                              frozenset({"grid"})))
    return sft, aligned


def test_a_scorer_and_a_strategy_added_by_one_module_and_one_registry_entry_each(plugins, tmp_path):
    result = invoke("search", *plugins, "--scorer", "alpha-reader", "--strategy", "every-other",
                    "--alphas", "0.2,0.3,0.4,0.5,0.6", "--out", "./s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "s" / "results.json").read_text())
    rows = {row["alpha"]: row["score"] for row in saved["results"]}
    assert sorted(rows) == [0.0, 0.2, 0.4, 0.6]  # every other α of the grid, and α = 0
    for alpha, score in rows.items():  # the dummy scorer's own arithmetic, on every row
        assert score == pytest.approx(-((alpha - 0.4) ** 2) + 0.095, abs=1e-6)
    assert saved["settings"]["strategy"] == "every-other" and saved["settings"]["scorer"] == "alpha-reader"
    assert "alpha: 0.4" in (tmp_path / "s" / "best.yml").read_text()
    # the race runs with the new scorer too: it scores dev rows by index
    raced = invoke("search", *plugins, "--scorer", "alpha-reader", "--alphas", "0.4,3", "--race",
                   "--out", "./r", cwd=tmp_path)
    assert raced.returncode == 0, raced.stderr
    assert json.loads((tmp_path / "r" / "results.json").read_text())["race"]["rows"] == 20
    # and a name nobody registered is one line naming the closest
    unknown = invoke("search", *plugins, "--strategy", "every-othr", "--out", "./x", cwd=tmp_path)
    assert unknown.returncode == 1 and "did you mean 'every-other'?" in unknown.stderr
