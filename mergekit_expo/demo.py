"""``mergekit-expo demo``: generate a tiny SFT/aligned pair and ExPO-merge it, offline."""

from pathlib import Path

import click
import yaml
from mergekit.options import MergeOptions

from mergekit_expo import manifest
from mergekit_expo.alpha import DEFAULT_ALPHA, checked_alpha
from mergekit_expo.atomic_output import staged_output
from mergekit_expo.checkpoint import load_all
from mergekit_expo.cli_errors import reports_errors
from mergekit_expo.output_guard import check_output
from mergekit_expo.run import run_config_file
from mergekit_expo.synthetic import PairSpec, write_pair

# Our text files that name the demo's own folders: written while staged, then pointed home.
NAMES_FOLDERS = ("expo.yml", "merged/mergekit_config.yml", "merged/README.md")


@click.command("demo")
@click.option("--out", "out_dir", default="./expo-demo", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the models, config and result")
@click.option("--alpha", default=str(DEFAULT_ALPHA), show_default=True,
              help="Extrapolation strength of the demo merge (0 gives the aligned model back)")
@click.option("--family", default="llama", show_default=True,
              type=click.Choice(["llama", "mistral", "qwen2"]))
@click.option("--overwrite", is_flag=True,
              help="Replace a demo folder this command wrote at --out, unchanged")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors")
@reports_errors
def demo_command(out_dir: str, alpha: str, family: str, overwrite: bool, verbose: bool):
    """Write a tiny SFT/aligned pair, merge it with `expo` through mergekit, and
    print where the result is and how it relates to its inputs."""
    alpha = checked_alpha(alpha, option="--alpha")
    target = check_output(out_dir, reads=[], kind="demo", command="mergekit-expo demo",
                          overwrite=overwrite)
    with staged_output(target) as staging:
        staging.mkdir()
        click.echo(f"Generating a tiny {family} SFT/aligned pair in {target.path / 'models'} ...")
        sft, aligned = write_pair(str(staging / "models"), PairSpec(family=family))
        config_path = staging / "expo.yml"
        config_path.write_text(yaml.safe_dump({
            "merge_method": "expo",
            "base_model": sft,
            "models": [{"model": aligned, "parameters": {"alpha": alpha}}],
            "dtype": "bfloat16",
        }, sort_keys=False))
        click.echo(f"Merging with mergekit (config: {target.path / 'expo.yml'}) ...")
        run_config_file(str(config_path), str(staging / "merged"), MergeOptions(quiet=True),
                        command="mergekit-expo demo")
        point_home(staging, target.path)
    root = target.path
    click.echo(summary(str(root / "models/sft"), str(root / "models/aligned"), root / "merged", alpha))


def point_home(staging: Path, home: Path) -> None:
    """The config and the model card name the staged folders: name the final ones."""
    for relative in NAMES_FOLDERS:
        file = staging / relative
        file.write_text(file.read_text(encoding="utf-8").replace(str(staging), str(home)), encoding="utf-8")
    manifest.refresh(staging / "merged")


def summary(sft_dir: str, aligned_dir: str, out_dir: Path, alpha: float) -> str:
    """Size of the result and the measured extrapolation ratio, checked in fp64."""
    sft, aligned, merged = load_all(sft_dir), load_all(aligned_dir), load_all(out_dir)
    update = sum(float(((aligned[k].double() - sft[k].double()) ** 2).sum()) for k in merged)
    extra = sum(float(((merged[k].double() - aligned[k].double()) ** 2).sum()) for k in merged)
    elements = sum(t.numel() for t in merged.values())
    return (
        f"ExPO model written to {out_dir}\n"
        f"  {len(merged)} tensors, {elements / 1e6:.2f}M parameters, "
        f"{next(iter(merged.values())).dtype}\n"
        f"  |θ_expo − θ_aligned| / |θ_aligned − θ_sft| = {(extra / update) ** 0.5:.4f}\n"
        f"    ExPO moves the aligned model α times its alignment update further, so this\n"
        f"    ratio should be α = {alpha:g} (up to bf16 rounding of the written model)\n"
        f"  load it with transformers.AutoModelForCausalLM.from_pretrained({str(out_dir)!r})"
    )
