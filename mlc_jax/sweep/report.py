"""A sweep's results: each trial's objective from its own log, SWEEPDIR/report.md and its plots.

report.md: the trials sorted by the objective (params, objective, epochs run, seconds, state;
pruned and failed ones after, failed ones with their message), the best trial as a runnable
launch.py command, and three plots drawn by Optuna's matplotlib backend in SWEEPDIR/plots/: the
objective against each parameter (slice.png), the optimisation history (history.png) and the
parameters' importances (importance.png, fANOVA; it needs two finished trials that differ).
"""
import json
import warnings

from mlc_jax import workdir as workdir_lib
from mlc_jax.errors import UserError
from mlc_jax.sweep import space as space_lib


def objective_value(workdir, name):
  """The best epoch's `name` over the last trained stage's rows of WORKDIR/metrics.jsonl."""
  rows = workdir_lib.read_metrics(workdir)
  stages = [r["stage"] for r in rows if name in r]
  if not stages:
    raise UserError(f"{workdir}: no epoch logged {name}")
  values = [r[name] for r in rows if r.get("stage") == stages[-1] and name in r]
  return min(values) if name == "val_loss" else max(values)


def interrupted(trial):
  """A trial marked failed because its process died mid-trial (no message of its own)."""
  return trial.state.name == "FAIL" and "error" not in trial.user_attrs


def state(t, resumed_as=None):
  """A trial's state as the report says it."""
  if t.state.name == "FAIL":
    return "fail: " + t.user_attrs.get("error", "interrupted: its process died mid-trial" + (
        f"; resumed as trial {resumed_as}" if resumed_as is not None else ""))
  if t.state.name == "PRUNED":
    return f"pruned after epoch {t.last_step + 1}" if t.last_step is not None else "pruned"
  return t.state.name.lower()


def plots(study, directory):
  """{name: path or the reason it was not drawn} of the three plots."""
  import matplotlib  # noqa: PLC0415 - only the report draws
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  import optuna  # noqa: PLC0415
  from optuna.visualization import matplotlib as vis  # noqa: PLC0415
  directory.mkdir(parents=True, exist_ok=True)
  out = {}
  for name, draw in (("slice", vis.plot_slice), ("history", vis.plot_optimization_history),
                     ("importance", vis.plot_param_importances)):
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < (2 if name == "importance" else 1):
      out[name] = f"not drawn: it needs {2 if name == 'importance' else 1} complete trials"
      continue
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        ax = draw(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. no parameter varies
      out[name] = f"not drawn: {e}"
      continue
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.tight_layout()
    path = directory / f"{name}.png"
    fig.savefig(path, dpi=90)
    plt.close("all")
    out[name] = path
  return out


def write_report(study, sweep_dir, config, config_path, overrides):
  """SWEEPDIR/report.md (see the module doc); returns its path."""
  name = config.sweep.objective
  done = [t for t in study.trials if t.state.name == "COMPLETE"]  # a pruned one has a value too
  done.sort(key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")
  pruned = [t for t in study.trials if t.state.name == "PRUNED"]
  failed = [t for t in study.trials if t.state.name == "FAIL"]
  lines = [f"# Sweep: {len(done)} trials done, {len(pruned)} pruned, {len(failed)} failed\n",
           f"Objective: {name} ({study.direction.name.lower()}), best epoch of the last trained "
           f"stage, validation split; sampler {config.sweep.sampler}, pruner "
           f"{config.sweep.pruner}.\n",
           f"| trial | {name} | params | epochs | seconds | state |", "|---|---|---|---|---|---|"]
  resumed = {t.user_attrs["resumes"]: t.number for t in study.trials if "resumes" in t.user_attrs}
  for t in done + pruned + failed:
    value = f"{t.value:.4f}" if t.state.name == "COMPLETE" else "-"
    epochs = t.user_attrs.get("epochs", "")
    lines.append(f"| {t.number} | {value} | {json.dumps(t.user_attrs.get('params', t.params))} | "
                 f"{epochs} | {t.user_attrs.get('seconds', '')} | {state(t, resumed.get(t.number))} |")
  if done:
    best = done[0]
    lines += ["", f"Best: trial {best.number}, {name} {best.value:.4f}. To train it again:", "",
              "    " + space_lib.command(
                  config_path, "runs/best",
                  {**{k: v for k, v in overrides.items() if not k.startswith("sweep.")},
                   **best.user_attrs["params"]})]
  lines += ["", "## Plots", ""]
  titles = {"slice": f"{name} against each parameter", "history": "optimisation history",
            "importance": "parameter importances (fANOVA)"}
  for key, result in plots(study, sweep_dir / "plots").items():
    lines.append(f"![{titles[key]}](plots/{key}.png)" if not isinstance(result, str)
                 else f"- {titles[key]}: {result}")
  path = sweep_dir / "report.md"
  workdir_lib.write_text(path, "\n".join(lines) + "\n")
  print(f"sweep: {len(done)} trials done, {len(pruned)} pruned, {len(failed)} failed; report "
        f"{path}", flush=True)
  return path
