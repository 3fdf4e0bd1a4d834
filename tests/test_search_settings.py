"""SearchSettings on its own: every rule about the search's options, checked before anything is
read, one line each; and what the settings give the search (the strategy, the plan, the engine's
options). In-process and fast: no model is loaded."""

import pytest
from pydantic import ValidationError

from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.search.settings import DEFAULT_ALPHAS, DEFAULT_TRIALS, SearchSettings


def settings(**values):
    """Settings as the command line gives them: each value given, so none passes for a default."""
    return SearchSettings(**values, given=frozenset(values))


REFUSED = [
    (dict(alphas=""), "--alphas '' names no α"),
    (dict(alphas="0,,0.5"), "--alphas '0,,0.5' has an empty value between its commas"),
    (dict(alphas="0,x"), "--alphas: 'x' is not a number"),
    (dict(space="depth", alpha_range=""), "--alpha-range '' must be two numbers LO,HI"),
    (dict(space="depth", alphas="0,1"), "--alphas applies to --space scalar"),
    (dict(space="depth", refine=True), "--refine applies to --space scalar"),
    (dict(trials=5), "--trials applies to --space module, depth or module+depth"),
    (dict(sampler="tpe"), "--sampler tpe draws from a range; --space scalar scores the --alphas grid"),
    (dict(space="depth", sampler="grid"), "--sampler grid is the --alphas grid of --space scalar"),
    (dict(space="depth", alpha_range="1,0.5"), "--alpha-range 1,0.5: LO must be below HI"),
    (dict(space="modul"), "unknown space 'modul' (--space): did you mean 'module'?"),
    (dict(engine="vlm"), "unknown engine 'vlm' (--engine): did you mean 'vllm'?"),
    (dict(scorer="preferense"), "unknown scorer 'preferense' (--scorer): did you mean 'preference'?"),
    (dict(scorer="lm_eval:arc_easy"), "did you mean lm-eval:arc_easy?"),
    (dict(strategy="rase"), "unknown strategy 'rase' (--strategy): did you mean 'race'?"),
    (dict(dtype="bf16"), "--dtype 'bf16' is not one of bfloat16, float16, float32"),
    (dict(guard="lm-eval:arc_easy"), "--guard needs --max-drop"),
    (dict(max_drop=0.1), "--max-drop needs --guard"),
    (dict(guard="lm-eval:arc_easy", max_drop=-1), "--max-drop must be 0 or more (a drop in the guard's units), "
     "got -1: give e.g. --max-drop 0.02"),
    (dict(guard="preferance", max_drop=0.05), "unknown scorer 'preferance' (--guard): did you mean 'preference'?"),
    (dict(scorer="lm-eval:arc_easy", engine="vllm"), "the lm-eval scorer runs with --engine hf"),
    (dict(limit=5), "--limit only applies to lm-eval scorers: use --scorer or --guard lm-eval:TASK"),
    (dict(reward_model="./rm"), "--reward-model only applies to reward-model scorers"),
    (dict(tensor_parallel_size=2), "--tensor-parallel-size is an option of --engine vllm, not of --engine hf"),
    (dict(engine="vllm", device="cuda"), "--device is an option of --engine hf, not of --engine vllm"),
    (dict(tasks_path="/no/such/folder"), "--tasks-path /no/such/folder is not a folder"),
    (dict(temperature=0.0), "--temperature must be > 0"),
    (dict(max_new_tokens=0), "--max-new-tokens must be at least 1, got 0"),
    (dict(race_tolerance=1.0, strategy="full"),
     "--race-tolerance applies to a race: add --race (--strategy curve or --strategy race)"),
    (dict(race=True, race_tolerance=float("inf")), "--race-tolerance must be a finite number"),
    (dict(race=True, refine=True), "--race cannot --refine"),
    (dict(race=True, space="depth", race_tolerance=1.0), "--race-tolerance ends the race of the --alphas grid"),
    (dict(strategy="prune"), "--strategy prune does not search --space scalar: use --strategy curve or full or race"),
    (dict(strategy="race", space="module"), "--strategy race does not search --space module"),
    (dict(strategy="full", race=True), "--race picks --strategy race for --space scalar, not full"),
]


@pytest.mark.parametrize("values, message", REFUSED, ids=[message for _, message in REFUSED])
def test_each_refusal_is_one_line_naming_the_option(values, message):
    with pytest.raises(ExpoConfigError) as refused:
        settings(**values)
    assert message in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("name, value", [("batch_size", 0), ("trials", 0), ("heartbeat", 0), ("limit", 0),
                                         ("gpu_memory_utilization", 1.5)])
def test_limits_of_one_value_are_pydantic_constraints(name, value):
    with pytest.raises(ValidationError):
        SearchSettings(**{name: value})


def test_defaults_and_what_they_give():
    default = SearchSettings()
    assert default.scorer == "preference" and default.engine == "hf" and default.space == "scalar"
    assert default.grid == list(DEFAULT_ALPHAS)
    # the curve search where it fits: the grid, and a scorer the registry says scores rows by index
    assert default.strategy_name == "curve" and default.per_row
    plan = default.plan(space=None, resolve=None)
    assert (plan.strategy, plan.trials, plan.sampler, plan.options) == ("curve", None, "grid", {"tolerance": 3.0})
    assert default.study_settings({"sft": "/m/sft", "aligned": "/m/aligned"})["strategy"] == "curve"
    sampled = settings(space="module+depth", alpha_range="0,2")
    assert sampled.grid is None and sampled.bounds == (0.0, 2.0) and sampled.strategy_name == "full"
    assert sampled.plan(space=None, resolve=None).trials == DEFAULT_TRIALS
    assert sampled.study_settings({"sft": "/m/sft", "aligned": "/m/aligned"})["sampler"] == "tpe"
    models = {"sft": "/m/sft", "aligned": "/m/aligned"}
    assert "strategy" not in sampled.study_settings(models)  # as earlier versions recorded it


def test_the_full_search_where_the_curve_does_not_fit():
    # a function or lm-eval: whether they score rows is known once loaded; --refine needs every α
    for values in (dict(scorer="my_module:score"), dict(scorer="lm-eval:arc_easy"), dict(refine=True),
                   dict(guard="lm-eval:arc_easy", max_drop=0.1), dict(strategy="full")):
        assert settings(**values).strategy_name == "full", values
    assert settings(scorer="my_module:score", strategy="curve").strategy_name == "curve"
    # and says so, once, where the grid would have had the curve search
    assert settings(refine=True).default_note().startswith("--strategy full: every α on every dev row "
                                                           "(--refine needs every α of the grid")
    assert SearchSettings().default_note() is None and settings(strategy="full").default_note() is None
    # the note names the option that is not known to score rows, the guard too
    assert "(--guard my_module:guard is not known to score dev rows one by one; if it does, --strategy curve " \
        "races a lattice of the grid)" in settings(guard="my_module:guard", max_drop=0.1).default_note()
    assert "(--scorer lm-eval:arc_easy is not known" in settings(scorer="lm-eval:arc_easy").default_note()


def test_race_picks_the_spaces_racing_strategy_and_its_own_options():
    grid = settings(race=True, race_tolerance=2.0)
    assert grid.strategy_name == "race" and grid.per_row
    assert grid.plan(space=None, resolve=None).options == {"tolerance": 2.0}
    assert grid.study_settings({"sft": "/m/sft", "aligned": "/m/aligned"})["race"] == {"seed": 0}
    sampled = settings(race=True, space="depth")
    assert sampled.strategy_name == "prune" and sampled.plan(space=None, resolve=None).options == {}
    assert settings(strategy="race").strategy_name == "race"  # --race is --strategy race, on the grid


def test_each_engine_gets_its_own_options():
    assert SearchSettings(batch_size=4).engine_options("cpu") == dict(
        device="cpu", batch_size=4, dtype=None, trust_remote_code=False)
    assert settings(engine="vllm", max_model_len=256, seed=3).engine_options("cpu") == dict(
        tensor_parallel_size=None, gpu_memory_utilization=None, max_model_len=256, seed=3, dtype=None,
        trust_remote_code=False)
    # the reward model's placement with vLLM: --device and --batch-size are the reward-model scorer's too
    assert settings(engine="vllm", scorer="reward-model", device="cpu", batch_size=2).device == "cpu"
