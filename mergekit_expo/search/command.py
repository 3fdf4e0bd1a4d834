"""``mergekit-expo search``: score candidate α values in one process, no checkpoint per α."""

import logging
import os
from pathlib import Path

import click

from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.errors import ExpoConfigError, first_line
from mergekit_expo.search.engine import ENGINES
from mergekit_expo.search.sampling import PRESETS

DTYPES = ("bfloat16", "float16", "float32")
LOG = logging.getLogger("mergekit_expo")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExpoConfigError("--device cuda was given but no CUDA device is visible: use --device cpu")
    return device


def check_search_outputs(out_dir, write_best, overwrite, *, sft, aligned, data, reward_model,
                         tasks_path=None):
    """Both outputs, before anything is read: never over an input or someone's files.

    Returns the checked --write-best output (None without it).
    """
    from mergekit_expo.output_guard import check_no_overlap, check_output, check_writable_parent
    from mergekit_expo.search.results import RESULTS

    inputs = [("the SFT model", sft), ("the aligned model", aligned), ("the data file", data),
              ("the reward model", reward_model), ("the lm-eval tasks folder", tasks_path)]
    out = Path(os.path.abspath(out_dir))
    check_no_overlap(out, out_dir, inputs)
    if out.exists() and not out.is_dir():
        raise ExpoConfigError(f"--out {out_dir} is a file: choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / RESULTS).is_file():
        raise ExpoConfigError(
            f"--out {out_dir} already holds files that are not an α search (no {RESULTS}): "
            "choose a new or empty folder"
        )
    check_writable_parent(out)
    if write_best:
        return check_output(write_best, reads=[*inputs, ("the search folder", out_dir)], kind="model",
                            command="mergekit-expo search --write-best", overwrite=overwrite)
    return None


def check_plotting() -> None:
    """The search ends with a plot: fail now, not after hours of scoring."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ExpoConfigError(
            f"the search draws score_vs_alpha.png with matplotlib, which cannot be imported "
            f"({first_line(error)}): pip install 'mergekit-expo[search]'"
        ) from None


def warn_if_same_weights(sft_folder, aligned_folder, sft, aligned) -> None:
    from mergekit_expo.preflight import same_weights

    if os.path.realpath(sft_folder) == os.path.realpath(aligned_folder) or same_weights(sft_folder,
                                                                                        aligned_folder):
        LOG.warning("the SFT and aligned models are the same checkpoint (%s and %s hold the same "
                    "weights): there is no alignment update, every α scores the aligned model",
                    sft, aligned)


def model_reference(reference: str) -> str:
    """How results.json and best.yml name a model: the Hub id as given, else an absolute path."""
    from mergekit_expo.hub import is_hub_id

    return reference if is_hub_id(reference) else os.path.abspath(reference)


def check_scorer_options(scorer, guard, max_drop, engine_name, lm_eval_options) -> None:
    """Options that only make sense together, checked before anything is loaded."""
    from mergekit_expo.search.lm_eval_scorer import (UNSUPPORTED_ENGINE, check_spelling, import_lm_eval,
                                                     is_lm_eval)

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


def positive(context, parameter, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


@click.command("search")
@click.argument("sft")
@click.argument("aligned")
@click.option("--scorer", default="preference", show_default=True,
              help="preference, reward-model, lm-eval:TASK[,TASK...], or module:function returning a float")
@click.option("--guard", help="A second scorer (any kind, typically lm-eval:TASK) that must not drop")
@click.option("--max-drop", type=float,
              help="With --guard: exclude α whose guard score is more than this below α = 0's")
@click.option("--tasks-path", type=click.Path(exists=True, file_okay=False),
              help="lm-eval: folder of your own task YAMLs (lm-eval's include path)")
@click.option("--limit", type=int, callback=positive, help="lm-eval: score only the first N examples per task")
@click.option("--num-fewshot", type=int, help="lm-eval: few-shot examples  [default: each task's]")
@click.option("--metric", help="lm-eval: metric to score, e.g. acc_norm  [default: each task's first]")
@click.option("--data", help="JSONL/CSV (or saved datasets folder) with the prompts or preference pairs")
@click.option("--reward-model", help="Sequence-classification model folder or Hub id (reward-model scorer)")
@click.option("--out", "out_dir", default="./expo-search", show_default=True, type=click.Path(),
              help="Folder for results.json/csv, the plot and best.yml; rerunning resumes it")
@click.option("--alphas", help="Comma-separated α values  [default: 0,0.1,...,0.6]")
@click.option("--refine", is_flag=True, help="Also score the midpoints around the best α")
@click.option("--engine", "engine_name", type=click.Choice(ENGINES), default="hf", show_default=True,
              help="hf: transformers, batched; vllm: vLLM with in-place weight reload")
@click.option("--device", default="cpu", show_default=True,
              help="cpu, cuda, cuda:N or auto (hf engine; with vllm: the reward model's)")
@click.option("--dtype", type=click.Choice(DTYPES), help="Load and merge in this dtype  [default: checkpoint's]")
@click.option("--batch-size", type=int, callback=positive,
              help="Prompts per batch (hf engine; with vllm: the reward model's)  "
                   "[default: automatic, halved on out-of-memory]")
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="paper: the released procedure's sampling (T 0.7, top-k 50, top-p 0.9, "
                   "penalties 0.1, up to 2048 tokens); options below override it")
@click.option("--max-new-tokens", type=int, help="Answer length (reward-model scorer)  [default: 64]")
@click.option("--sample/--greedy", default=None, help="Seeded sampling or greedy decoding  [default: greedy]")
@click.option("--temperature", type=float, help="Sampling temperature  [default: 1.0]")
@click.option("--top-p", type=float, help="Nucleus sampling mass  [default: 1.0]")
@click.option("--top-k", type=int, help="Top-k cut, 0 = off  [default: 0]")
@click.option("--seed", default=0, show_default=True,
              help="Seed of sampling (--sample); reruns draw the same answers")
@click.option("--tensor-parallel-size", type=int, callback=positive,
              help="vLLM: GPUs per model  [default: all visible GPUs; 1 on CPU]")
@click.option("--gpu-memory-utilization", type=float, help="vLLM: share of GPU memory it may take")
@click.option("--max-model-len", type=int, callback=positive, help="vLLM: context length to reserve")
@click.option("--trust-remote-code", is_flag=True, help="Run model code from the checkpoints (danger)")
@click.option("--write-best", type=click.Path(), help="Merge the best α with mergekit into this folder")
@click.option("--overwrite", is_flag=True,
              help="Let --write-best replace a model mergekit-expo wrote there, unchanged (never an input)")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors")
@reports_errors(interrupted="the α values scored so far are kept in results.json: "
                            "rerun the same command to resume")
def search_command(sft, aligned, scorer, guard, max_drop, tasks_path, limit, num_fewshot, metric,
                   data, reward_model, out_dir, alphas, refine, engine_name,
                   device, dtype, batch_size, preset, max_new_tokens, sample, temperature, top_p,
                   top_k, seed, tensor_parallel_size, gpu_memory_utilization, max_model_len,
                   trust_remote_code, write_best, overwrite, verbose):
    """Pick α the way the paper does: score the ExPO model of each candidate α on a dev
    set, in one process, without writing a checkpoint per α."""
    from mergekit_expo import hub
    from mergekit_expo.hosts import require_mergekit
    from mergekit_expo.preflight import check_pair, check_tokenizer
    from mergekit_expo.search.engine import make_engine
    from mergekit_expo.search.runner import fingerprint, parse_alphas, search
    from mergekit_expo.search.sampling import build_sampling
    from mergekit_expo.search.scorers import make_scorer

    if write_best:  # before the search: its merge needs mergekit, not just any host
        require_mergekit("--write-best")
    if engine_name == "hf":
        from mergekit_expo.search.hf_engine import check_transformers_loader

        check_transformers_loader()
    candidates = parse_alphas(alphas)
    lm_eval_options = dict(tasks_path=tasks_path, limit=limit, num_fewshot=num_fewshot, metric=metric)
    check_scorer_options(scorer, guard, max_drop, engine_name, lm_eval_options)
    context = click.get_current_context()
    given = {name for name in context.params
             if context.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    check_engine_options(engine_name, given, uses_reward_model="reward-model" in (scorer, guard))
    if guard and 0.0 not in candidates:
        click.echo("--guard compares with alpha = 0: scoring it too", err=True)
        candidates = [0.0, *candidates]
    sampling = build_sampling(preset, seed=seed, max_new_tokens=max_new_tokens, sample=sample,
                              temperature=temperature, top_p=top_p, top_k=top_k)
    best_output = check_search_outputs(out_dir, write_best, overwrite, sft=sft, aligned=aligned,
                                       data=data, reward_model=reward_model, tasks_path=tasks_path)
    check_plotting()
    device = resolve_device(device)
    if engine_name == "vllm":
        from mergekit_expo.search.vllm_engine import import_vllm

        import_vllm()  # before anything is read or written: name the extra to install
    sft_folder, aligned_folder = hub.resolve(sft, "SFT model"), hub.resolve(aligned, "aligned model")
    reward_folder = hub.resolve(reward_model, "reward model")
    check_pair(sft_folder, aligned_folder)  # before the search folder is created
    check_tokenizer(aligned_folder, "aligned")
    warn_if_same_weights(sft_folder, aligned_folder, sft, aligned)
    scorer_options = dict(data=data, reward_model=reward_folder, sampling=sampling, device=device,
                          batch_size=batch_size, trust_remote_code=trust_remote_code,
                          lm_eval_options=lm_eval_options)
    scoring = make_scorer(scorer, **scorer_options)
    guarding = make_scorer(guard, **scorer_options) if guard else None
    engine_options = dict(dtype=dtype, trust_remote_code=trust_remote_code)
    if engine_name == "hf":
        engine_options.update(device=device, batch_size=batch_size)
    else:
        engine_options.update(tensor_parallel_size=tensor_parallel_size, seed=seed,
                              gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)
    settings = {"data": fingerprint(data), "reward_model": reward_model and model_reference(reward_model),
                "sampling": sampling.settings(), "engine": engine_name}
    for role, used in (("scorer", scoring), ("guard", guarding)):
        if hasattr(used, "settings"):  # lm-eval: tasks, metrics, limit, few-shot
            settings[f"{role}_settings"] = used.settings()
    results, reports = search(
        model_reference(sft), model_reference(aligned), out_dir, scoring, candidates, refine=refine,
        settings=settings, dtype=dtype, guard=guarding, max_drop=max_drop,
        about={"data_file": data and os.path.abspath(data)},
        open_engine=lambda: make_engine(engine_name, sft_folder, aligned_folder, **engine_options))
    click.echo(results.summary())
    click.echo("wrote " + ", ".join(str(p) for p in reports.values()))
    if write_best:
        from mergekit.options import MergeOptions

        from mergekit_expo.run import run_config_file

        out = run_config_file(str(reports["best"]), write_best,
                              MergeOptions(device=device, quiet=True), overwrite=overwrite, search=out_dir,
                              command="mergekit-expo search --write-best", checked=best_output)
        click.echo(f"ExPO model with alpha = {results.best().alpha:g} written to {out}")
