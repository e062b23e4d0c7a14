"""`rdtf export`: a run's weights as a diffusers pipeline folder that loads without rdtf.

    PIPELINE_DIR/model_index.json         the components, and the run's resolution, DDIM steps, guidance, eta, anchor
    PIPELINE_DIR/pipeline_rdtf.py         RDTFPipeline (this package's pipeline_rdtf.py, copied)
    PIPELINE_DIR/unet/                    DFGN's config and weights, and modeling_dfgn.py: DFGN's code, generated from
                                          trainer/sti.py, trainer/dfgn.py and the settings' checks they use
    PIPELINE_DIR/scheduler/               DDIMScheduler with the run's noise schedule
    PIPELINE_DIR/text_encoder/            the open_clip text tower, and modeling_open_clip_text.py (copied)
    PIPELINE_DIR/vae/                     the run's AutoencoderKL; absent (null in model_index.json) in pixel space
    PIPELINE_DIR/rdtf_run.json            where it came from: the run's config, the checkpoint, EMA or not

Diffusers loads code that sits in a folder only when asked: `DiffusionPipeline.from_pretrained(PIPELINE_DIR,
trust_remote_code=True)`. See ../docs/export.md.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

import diffusers
import open_clip

from rdtf.schemas import config as schemas_config
from rdtf.schemas.config import ConfigError, to_dict
from rdtf.trainer import checkpoint, dfgn, model_settings, run_folder, sti
from rdtf.trainer.diffusion import sample_scheduler
from rdtf.trainer.export import pipeline_rdtf
from rdtf.trainer.export.modeling_open_clip_text import OpenCLIPTextEncoder
from rdtf.trainer.sample import load_run_config
from rdtf.trainer.text import TextEncoder

HERE = Path(__file__).parent
PIPELINE_FILE = "pipeline_rdtf.py"
DFGN_FILE = "modeling_dfgn.py"
TEXT_FILE = "modeling_open_clip_text.py"
RUN_FILE = "rdtf_run.json"

# The code DFGN needs, in order: module -> the top-level names to take (None: all of them, less the ones listed in
# LEFT_OUT). Imports of rdtf modules are dropped; every other import is kept where the kept code uses its name.
STANDALONE_DFGN: tuple[tuple[ModuleType, tuple[str, ...] | None], ...] = (
    (schemas_config, ("ConfigError", "require")),
    (model_settings, ("TemporalLayer", "TEMPORAL_LAYERS", "Fusion", "FUSIONS", "COUNTS", "check_values")),
    (sti, None),
    (dfgn, None),
)
LEFT_OUT = {"read_model_config", "count_parameters"}  # preset helpers: YAML files, parameter counts


def step_tag(step: str | None) -> str | None:
    """`--step 100` or `--step step-00000100` -> "step-00000100"; None: the last checkpoint."""
    if step is None:
        return None
    return run_folder.tag(int(step)) if step.isdigit() else step


def export_pipeline(run_dir: str, out: str, step: str | None = None, use_ema: bool = True) -> str:
    """Write the checkpoint `step` (the last by default; its EMA weights when it has some and `use_ema`) of the run in
    `run_dir` as a diffusers pipeline folder at `out`, which must be absent or empty. Everything is written into a
    hidden folder beside `out` and renamed into place, so a failed export leaves nothing behind."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConfigError(f"--out {out} is not empty: give a new or empty folder for the pipeline")
    cfg = load_run_config(run_dir)
    weights = checkpoint.weights_folder(run_dir, use_ema, step_tag(step))

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.", dir=parent)
    try:
        # 1. the denoiser: code generated, weights re-saved under a config of DFGN's own keys (an EMA folder's
        # config also holds the EMA's settings, which diffusers would warn about at every load)
        trained = dfgn.DFGN.from_pretrained(weights)
        keys = inspect.signature(dfgn.DFGN.__init__).parameters.keys() - {"self"}
        model = dfgn.DFGN(**{key: trained.config[key] for key in keys})
        model.load_state_dict(trained.state_dict())
        model.to(trained.dtype).save_pretrained(os.path.join(staging, "unet"))
        Path(staging, "unet", DFGN_FILE).write_text(standalone_dfgn_source())
        # 2. the sampler's noise schedule
        sample_scheduler(cfg.diffusion).save_pretrained(os.path.join(staging, "scheduler"))
        # 3. the text tower, built as the run built it (its weights file, or random weights from its seed)
        tower = TextEncoder(cfg.text)  # registers rdtf's own open_clip configs
        text = OpenCLIPTextEncoder(model_cfg=open_clip.get_model_config(cfg.text.model), model_name=cfg.text.model)
        text.load_state_dict(tower.state_dict())
        text.save_pretrained(os.path.join(staging, "text_encoder"))
        shutil.copyfile(HERE / TEXT_FILE, os.path.join(staging, "text_encoder", TEXT_FILE))
        # 4. the VAE, in latent space
        if cfg.latent.mode == "vae":
            diffusers.AutoencoderKL.from_pretrained(cfg.latent.vae_path).save_pretrained(os.path.join(staging, "vae"))
        # 5. the pipeline: its code and model_index.json
        shutil.copyfile(HERE / PIPELINE_FILE, os.path.join(staging, PIPELINE_FILE))
        index = {
            "_class_name": [Path(PIPELINE_FILE).stem, pipeline_rdtf.RDTFPipeline.__name__],
            "_diffusers_version": diffusers.__version__,
            "unet": [Path(DFGN_FILE).stem, dfgn.DFGN.__name__],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": [Path(TEXT_FILE).stem, OpenCLIPTextEncoder.__name__],
            "vae": ["diffusers", "AutoencoderKL"] if cfg.latent.mode == "vae" else [None, None],
            "resolution": cfg.latent.resolution,
            "num_inference_steps": cfg.diffusion.sample_steps,
            "text_scale": cfg.diffusion.text_scale,
            "image_scale": cfg.diffusion.image_scale,
            "eta": cfg.diffusion.eta,
            "anchor": cfg.diffusion.anchor,
        }
        Path(staging, "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        source = {"run_dir": os.path.abspath(run_dir), "weights": os.path.relpath(weights, run_dir)}
        Path(staging, RUN_FILE).write_text(json.dumps(source | {"config": to_dict(cfg)}, indent=2) + "\n")
        if os.path.isdir(out):
            os.rmdir(out)  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def standalone_dfgn_source() -> str:
    """DFGN's module as one file that imports only torch and diffusers: the top-level code of STANDALONE_DFGN's
    modules, with the comments above each definition, and the imports that code uses."""
    imports: list[ast.Import | ast.ImportFrom] = []
    chunks: list[str] = []
    for module, names in STANDALONE_DFGN:
        source = inspect.getsource(module)
        lines = source.splitlines()
        kept: list[str] = []
        start = 0
        for node in ast.parse(source).body:
            segment = "\n".join(lines[start : node.end_lineno])  # the node, and the comments and blank lines above it
            start = node.end_lineno
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imports.append(node)
            elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # not the docstring
                name = _defined_name(node)
                if (name not in LEFT_OUT) if names is None else (name in names):
                    kept.append(segment)
        chunks.append("\n".join(kept).strip("\n"))
    code = "\n\n\n".join(chunks)
    used = {node.id for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Name)}
    header = (
        f'"""DFGN, the denoiser of an rdtf run, written by `rdtf export` from rdtf\'s trainer/model_settings.py, '
        f"sti.py and dfgn.py\n(diffusers {diffusers.__version__}). Self-contained: it imports torch and diffusers, "
        'no rdtf code."""\n\nfrom __future__ import annotations\n\n'
    )
    return header + "\n".join(_import_lines(imports, used)) + "\n\n\n" + code + "\n"


def _defined_name(node: ast.stmt) -> str | None:
    """The name a top-level statement defines (a function, class or assignment)."""
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    if isinstance(node, ast.Assign):
        target = node.targets[0]
        first = target.elts[0] if isinstance(target, ast.Tuple) else target
        return first.id if isinstance(first, ast.Name) else None
    return None


def _import_lines(nodes: list[ast.Import | ast.ImportFrom], used: set[str]) -> list[str]:
    """The import statements, merged per module, with only the names `used` keeps; no rdtf or __future__ imports."""
    modules: dict[str | None, dict[str, ast.alias]] = {}  # module (None: plain `import x`) -> its names, in order
    for node in nodes:
        module = node.module if isinstance(node, ast.ImportFrom) else None
        if module is not None and module.split(".")[0] in ("rdtf", "__future__"):
            continue
        for alias in node.names:
            bound = alias.asname or (alias.name if module is not None else alias.name.split(".")[0])
            if bound in used:
                modules.setdefault(module, {})[ast.unparse(alias)] = alias
    plain = [ast.unparse(ast.Import([alias])) for alias in modules.pop(None, {}).values()]  # one per line
    return plain + [ast.unparse(ast.ImportFrom(module, list(names.values()), 0)) for module, names in modules.items()]
