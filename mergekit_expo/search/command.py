"""``mergekit-expo search``: score candidate α values per worker process, no checkpoint per candidate."""

import json
import logging
import os
from pathlib import Path

import click

from mergekit_expo import hub
from mergekit_expo.checkpoint import shard_of
from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.compat.lm_eval import import_lm_eval
from mergekit_expo.compat.optuna import check_optuna
from mergekit_expo.compat.transformers import check_transformers_loader
from mergekit_expo.errors import ExpoConfigError
from mergekit_expo.hosts import require_mergekit
from mergekit_expo.output_guard import check_no_overlap, check_output, check_writable_parent
from mergekit_expo.preflight import check_pair, check_tokenizer, same_weights
from mergekit_expo.search import racing
from mergekit_expo.search.engine import make_engine
from mergekit_expo.search.lm_eval_scorer import UNSUPPORTED_ENGINE, check_spelling
from mergekit_expo.search.ownership import check_owner
from mergekit_expo.search.results import RESULTS, check_plotting
from mergekit_expo.search.runner import DEFAULT_TRIALS, Plan, fingerprint, parse_alphas, parse_range, search
from mergekit_expo.search.sampling import build_sampling
from mergekit_expo.search.scoring import is_lm_eval, make_scorer
from mergekit_expo.search.settings import GroupedHelp, search_options
from mergekit_expo.search.space import CandidateResolver, Space, make_space, planned_alphas
from mergekit_expo.search.study import DEFAULT_STORAGE, open_storage, storage_url
from mergekit_expo.search.vllm_engine import import_vllm

LOG = logging.getLogger("mergekit_expo")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExpoConfigError("--device cuda was given but no CUDA device is visible: use --device cpu")
    return device


def check_search_outputs(out_dir, write_best, overwrite, *, sft, aligned, data, reward_model,
                         settings, tasks_path=None, storage=None):
    """Both outputs, before anything is read: never over an input, someone's files or another
    study's reports. Returns the checked --write-best output (None without it)."""
    inputs = [("the SFT model", sft), ("the aligned model", aligned), ("the data file", data),
              ("the reward model", reward_model), ("the lm-eval tasks folder", tasks_path)]
    out = Path(os.path.abspath(out_dir))
    check_no_overlap(out, out_dir, inputs)
    if out.exists() and not out.is_dir():
        raise ExpoConfigError(f"--out {out_dir} is a file: choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / RESULTS).is_file() \
            and not (out / DEFAULT_STORAGE).is_file():
        raise ExpoConfigError(
            f"--out {out_dir} already holds files that are not an α search (no {RESULTS}): "
            "choose a new or empty folder"
        )
    check_owner(out_dir, storage, settings)
    check_writable_parent(out)
    if write_best:
        return check_output(write_best, reads=[*inputs, ("the search folder", out_dir)], kind="model",
                            command="mergekit-expo search --write-best", overwrite=overwrite)
    return None


def warn_if_same_weights(sft_folder, aligned_folder, sft, aligned) -> None:
    if os.path.realpath(sft_folder) == os.path.realpath(aligned_folder) or same_weights(sft_folder,
                                                                                        aligned_folder):
        LOG.warning("the SFT and aligned models are the same checkpoint (%s and %s hold the same "
                    "weights): there is no alignment update, every α scores the aligned model",
                    sft, aligned)


def model_reference(reference: str) -> str:
    """How results.json and best.yml name a model: the Hub id as given, else an absolute path."""
    return reference if hub.is_hub_id(reference) else os.path.abspath(reference)


def check_scorer_options(scorer, guard, max_drop, engine_name, lm_eval_options) -> None:
    """Options that only make sense together, checked before anything is loaded."""
    check_spelling(scorer)
    check_spelling(guard)
    if (guard is None) != (max_drop is None):
        given, missing = ("--guard", "--max-drop") if guard else ("--max-drop", "--guard")
        raise ExpoConfigError(f"{given} needs {missing}: e.g. --guard lm-eval:arc_easy --max-drop 0.02")
    if max_drop is not None and not max_drop >= 0:
        raise ExpoConfigError(f"--max-drop must be 0 or more (a drop in the guard's units), got {max_drop}")
    uses_lm_eval = is_lm_eval(scorer) or is_lm_eval(guard)
    given = [f"--{name.replace('_', '-')}" for name, value in lm_eval_options.items() if value is not None]
    if given and not uses_lm_eval:
        verb = "applies" if len(given) == 1 else "apply"
        raise ExpoConfigError(f"{', '.join(given)} only {verb} to lm-eval scorers: "
                              "use --scorer lm-eval:TASK or --guard lm-eval:TASK, or drop them")
    if uses_lm_eval:
        if engine_name != "hf":
            raise ExpoConfigError(UNSUPPORTED_ENGINE)
        import_lm_eval()


def check_space_options(settings) -> None:
    """Options of one space used with another, the range and the sampler: one line each."""
    if settings.space == "scalar":
        for given, name in ((settings.trials, "--trials"), (settings.alpha_range, "--alpha-range")):
            if given is not None:
                raise ExpoConfigError(f"{name} applies to --space module, depth or module+depth; --space scalar "
                                      "scores the --alphas grid: drop it, or choose another --space")
        if settings.sampler not in (None, "grid"):
            raise ExpoConfigError(f"--sampler {settings.sampler} draws from a range; --space scalar scores the "
                                  "--alphas grid: drop --sampler, or choose --space module, depth or module+depth")
        return
    for given, name in ((settings.alphas, "--alphas"), (settings.refine or None, "--refine")):
        if given is not None:
            raise ExpoConfigError(f"{name} applies to --space scalar; --space {settings.space} draws candidates "
                                  "from --alpha-range: use --alpha-range LO,HI and --trials N instead")
    if settings.sampler == "grid":
        raise ExpoConfigError(f"--sampler grid is the --alphas grid of --space scalar; --space {settings.space} "
                              "needs tpe, cmaes or random")


# Options that one engine takes; given with the other engine they are an error, never dropped.
ENGINE_OPTIONS = {"hf": ("device", "batch_size"),
                  "vllm": ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len")}


def check_engine_options(engine_name, given, uses_reward_model) -> None:
    """``given``: names of the options on the command line (not defaults)."""
    for owner, names in ENGINE_OPTIONS.items():
        if owner == engine_name or (owner == "hf" and uses_reward_model):
            continue  # with vLLM, --device and --batch-size place and batch the reward model
        for name in names:
            if name in given:
                raise ExpoConfigError(f"--{name.replace('_', '-')} is an option of --engine {owner}, "
                                      f"not of --engine {engine_name}: drop it, or use --engine {owner}")


def study_settings(s, sampling, sft, aligned, grid, alpha_range) -> dict:
    """What makes two runs the same search (results.json's settings): another value is refused,
    by the --out before any work and by the study itself."""
    reward_model = s.reward_model and model_reference(s.reward_model)
    settings = {"data": fingerprint(s.data), "reward_model": reward_model, "sampling": sampling.settings(),
                "engine": s.engine, "sft": model_reference(sft), "aligned": model_reference(aligned),
                "dtype": s.dtype, "scorer": s.scorer, "space": s.space}
    if s.guard:
        settings["guard"] = s.guard
    if grid is None:
        settings.update(alpha_range=list(alpha_range), sampler=s.sampler or "tpe")
    return settings


def model_space(settings, sft_folder, aligned_folder, sft, aligned):
    """The space for these models and the resolver of its candidates (through mergekit)."""
    names = sorted(shard_of(Path(aligned_folder)))
    model_type = json.loads((Path(aligned_folder) / "config.json").read_text()).get("model_type")
    sft_ref, aligned_ref = model_reference(sft), model_reference(aligned)
    if settings.space in ("module", "module+depth"):
        planned = planned_alphas(Space("scalar").config(sft_folder, aligned_folder, {"alpha": 0.0}),
                                 trust_remote_code=settings.trust_remote_code)
        space = make_space(settings.space, sorted(planned))
    else:
        space = make_space(settings.space, names)
    resolver = CandidateResolver(space, sft_folder, aligned_folder, checkpoint_names=names, model_type=model_type,
                                 dtype=settings.dtype, trust_remote_code=settings.trust_remote_code,
                                 named=(sft_ref, aligned_ref))
    return space, resolver


@click.command("search", cls=GroupedHelp)
@click.argument("sft")
@click.argument("aligned")
@search_options
@reports_errors(interrupted="the candidates scored so far are kept in the study and results.json: "
                            "rerun the same command to resume")
def search_command(sft, aligned, settings):
    """Pick α the way the paper does: score the ExPO model of each candidate on a dev
    set, in one process per worker, without writing a checkpoint per candidate.

    A candidate is one α (--space scalar) or one per module group and/or depth; any
    number of processes running this command on one --out (or --storage) share the work.
    """
    s = settings
    if s.write_best:  # before the search: its merge needs mergekit, not just any host
        require_mergekit("--write-best")
    if s.engine == "hf":
        check_transformers_loader()
    require_mergekit("mergekit-expo search")  # candidates resolve through mergekit's planner
    check_space_options(s)
    grid = parse_alphas(s.alphas) if s.space == "scalar" else None
    alpha_range = parse_range(s.alpha_range)
    check_scorer_options(s.scorer, s.guard, s.max_drop, s.engine, s.lm_eval_options())
    context = click.get_current_context()
    given = {name for name in context.params
             if context.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    check_engine_options(s.engine, given, uses_reward_model="reward-model" in (s.scorer, s.guard))
    if s.guard and grid is not None and 0.0 not in grid:
        click.echo("--guard compares with alpha = 0: scoring it too", err=True)
    sampling = build_sampling(s.preset, seed=s.seed, max_new_tokens=s.max_new_tokens, sample=s.sample,
                              temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
    identity = study_settings(s, sampling, sft, aligned, grid, alpha_range)
    identity.update(racing.study_settings(s))
    best_output = check_search_outputs(s.out, s.write_best, s.overwrite, sft=sft, aligned=aligned,
                                       data=s.data, reward_model=s.reward_model, tasks_path=s.tasks_path,
                                       storage=s.storage, settings=identity)
    check_plotting()
    check_optuna(s.sampler)
    if s.storage:  # an unopenable storage is one line before any model is read
        open_storage(storage_url(s.storage, s.out), s.heartbeat)
    device = resolve_device(s.device)
    if s.engine == "vllm":
        import_vllm()  # before anything is read or written: name the extra to install
    sft_folder, aligned_folder = hub.resolve(sft, "SFT model"), hub.resolve(aligned, "aligned model")
    reward_folder = hub.resolve(s.reward_model, "reward model")
    check_pair(sft_folder, aligned_folder)  # before the search folder is created
    check_tokenizer(aligned_folder, "aligned")
    warn_if_same_weights(sft_folder, aligned_folder, sft, aligned)
    space, resolver = model_space(s, sft_folder, aligned_folder, sft, aligned)
    scorer_options = dict(data=s.data, reward_model=reward_folder, sampling=sampling, device=device,
                          batch_size=s.batch_size, trust_remote_code=s.trust_remote_code,
                          lm_eval_options=s.lm_eval_options())
    scoring = make_scorer(s.scorer, **scorer_options)
    guarding = make_scorer(s.guard, **scorer_options) if s.guard else None
    racing.check(s, scoring, guarding)
    engine_options = dict(dtype=s.dtype, trust_remote_code=s.trust_remote_code)
    if s.engine == "hf":
        engine_options.update(device=device, batch_size=s.batch_size)
    else:
        engine_options.update(tensor_parallel_size=s.tensor_parallel_size, seed=s.seed,
                              gpu_memory_utilization=s.gpu_memory_utilization, max_model_len=s.max_model_len)
    for role, used in (("scorer", scoring), ("guard", guarding)):
        if hasattr(used, "settings"):  # lm-eval: tasks, metrics, limit, few-shot
            identity[f"{role}_settings"] = used.settings()
    plan = Plan(space=space, resolve=resolver, grid=grid, refine=s.refine,
                trials=None if grid is not None else (s.trials or DEFAULT_TRIALS), alpha_range=alpha_range,
                sampler=s.sampler or ("grid" if grid is not None else "tpe"), seed=s.seed, storage=s.storage,
                heartbeat=s.heartbeat, race=racing.plan_of(s))
    results, reports, log = search(
        s.out, scoring, plan, settings=identity, guard=guarding, max_drop=s.max_drop,
        about={"data_file": s.data and os.path.abspath(s.data)},
        open_engine=lambda: make_engine(s.engine, sft_folder, aligned_folder, **engine_options))
    click.echo(results.summary())
    click.echo("wrote " + ", ".join(str(p) for p in reports.values()))
    click.echo(f"this worker scored {len(log.scored)} candidate{'s' if len(log.scored) != 1 else ''} "
               f"and waited {log.idle_seconds:.1f} s for other workers' candidates", err=True)
    if s.write_best:
        if log.scored and log.last_completed not in log.scored:
            click.echo(f"the worker that scored the last candidate merges {reports['best']} into "
                       f"{s.write_best}", err=True)
            return
        from mergekit.options import MergeOptions

        from mergekit_expo.run import run_config_file

        out = run_config_file(str(reports["best"]), s.write_best,
                              MergeOptions(device=device, quiet=True), overwrite=s.overwrite, search=s.out,
                              command="mergekit-expo search --write-best", checked=best_output)
        best = results.best()
        click.echo(f"ExPO model with {'alpha = ' if results.scalar else ''}{best.label} written to {out}")
