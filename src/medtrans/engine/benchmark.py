"""``medtrans benchmark``: every entry trained on one split with one budget, scored by the same code.

A SPEC (YAML, validated like run configs) names the data and task, the entries (a recipe each, or
``all``: every registered method with its recipe in ``configs/``), the budget (steps and/or minutes),
the seeds, the inference settings and the evaluation preset. For each entry and seed the harness

1. trains (in a child process, so one entry's crash or memory does not touch the others, and its
   peak memory is its own) on the split written once to ``OUT/splits.json`` — a run folder that
   already finished is skipped, one interrupted is resumed from its checkpoint;
2. predicts the test subjects: the mean of ``samples`` samples (with std maps) and, for stochastic
   methods, one sample, timing each volume;
3. evaluates both with ``engine.evaluator.evaluate`` under the spec's preset;

and records the entry's status (``done`` or ``failed`` with the error) in ``OUT/entries/<entry>.json``.
``engine.leaderboard`` turns those into the leaderboard, statistics and the report page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from medtrans.atomic import write_json
from medtrans.config import Component, SplitFractions, _describe, _Strict
from medtrans.errors import MedtransError

#: where ``all`` looks for a method's recipe: files ``<prefix><method>.yaml``
RECIPE_PREFIX = "phantom_t1_t2_"


class DataSpec(_Strict):
    root: Path
    layout: str | None = None
    sources: list[str] = Field(min_length=1)
    target: str
    dims: Literal["2d", "2.5d", "3d"] = "2d"
    splits: SplitFractions = Field(default_factory=SplitFractions)
    mask: str | None = Field(None, description="evaluation mask: a folder of <subject> masks, or null for "
                             "the dataset's own masks")


class EntrySpec(_Strict):
    """One competitor: a recipe (its method, networks and optimiser) with optional changes."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    recipe: Path
    backbone: Component | None = None
    set: list[str] = Field(default_factory=list, description="--set overrides; {runs} is OUT/runs")
    evaluate: bool = Field(True, description="false for a stage that does not translate (a VQ-VAE)")


class BudgetSpec(_Strict):
    steps: int | None = Field(None, ge=1)
    minutes: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _some(self) -> BudgetSpec:
        if self.steps is None and self.minutes is None:
            raise ValueError("give steps and/or minutes")
        return self


class InferenceSpec(_Strict):
    steps: int | None = Field(None, ge=1, description="sampling steps (null: each method's default)")
    samples: int = Field(8, ge=1)
    seed: int = 0


class BenchmarkSpec(_Strict):
    name: str = "benchmark"
    data: DataSpec
    entries: list[EntrySpec | Literal["all"]] = Field(min_length=1)
    budget: BudgetSpec
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    preset: str = "default"
    primary: str = Field("psnr", description="metric that ranks the leaderboard (higher is better, "
                         "except mae / rmse / nmse)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    baselines: bool = Field(True, description="also score the trivial intensity-map baselines "
                            "(engine.baselines), fitted on the training subjects: the bar to clear")


def load_spec(path: str | os.PathLike) -> tuple[BenchmarkSpec, list[EntrySpec]]:
    """Read and validate a SPEC; ``all`` is expanded to every registered method's recipe."""
    path = Path(path)
    if not path.is_file():
        raise MedtransError(path, "benchmark spec not found",
                            "give a YAML file, e.g. configs/benchmark_phantom.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        spec = BenchmarkSpec.model_validate(raw)
    except yaml.YAMLError as err:
        raise MedtransError(path, f"not valid YAML ({err})", "check indentation and quoting") from None
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise MedtransError(path, problems, "fix the benchmark spec") from None
    base = path.parent
    entries: list[EntrySpec] = []
    for entry in spec.entries:
        if entry == "all":
            entries.extend(expand_all(base))
        else:
            entries.append(entry.model_copy(update={"recipe": _find_recipe(entry.recipe, base)}))
    for entry in entries:
        fixed = [key for key in _set_keys(entry) if _fixed_by_spec(key, spec)]
        if fixed:
            raise MedtransError(path, f"entry {entry.name} sets {', '.join(fixed)}, which the benchmark "
                                "fixes for every entry (data, split, budget, seed, inference)",
                                "change it in the spec's data/budget/seeds/inference, not in one entry")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise MedtransError(path, f"entry name(s) {', '.join(dup)} given twice", "name each entry once")
    return spec, entries


#: config keys the harness sets for every entry: an entry changing one would not compete on equal terms
FIXED_KEYS = ("data", "seed", "name", "device", "inference", "optim.steps", "optim.epochs")


def _set_keys(entry: EntrySpec) -> list[str]:
    return [line.split("=", 1)[0].strip() for line in entry.set]


def _fixed_by_spec(key: str, spec: BenchmarkSpec) -> bool:
    fixed = FIXED_KEYS + (("optim.batch_size",) if spec.budget.batch_size is not None else ())
    return any(key == k or key.startswith(k + ".") for k in fixed)


def _recipe_dirs(base: Path) -> list[Path]:
    return [base, Path.cwd() / "configs", Path(__file__).resolve().parents[3] / "configs"]


def _find_recipe(recipe: Path, base: Path) -> Path:
    if recipe.is_absolute():
        candidates = [recipe]
    else:
        candidates = [d / recipe for d in _recipe_dirs(base)] + [Path.cwd() / recipe]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(str(d) for d in _recipe_dirs(base))
    raise MedtransError(recipe, "recipe not found", f"looked in {looked}")


def expand_all(base: Path) -> list[EntrySpec]:
    """One entry per registered method that translates on its own, from ``<prefix><method>.yaml``."""
    from medtrans.registry import METHODS

    entries = []
    for name in METHODS.names():
        if not getattr(METHODS.get(name), "standalone", True):
            continue
        recipe = next((d / f"{RECIPE_PREFIX}{name}.yaml" for d in _recipe_dirs(base)
                       if (d / f"{RECIPE_PREFIX}{name}.yaml").is_file()), None)
        if recipe is None:
            raise MedtransError(None, f"no recipe {RECIPE_PREFIX}{name}.yaml for method {name!r} "
                                "(entries: all)", "add the recipe to configs/, or list the entries")
        entries.append(EntrySpec(name=name, recipe=recipe.resolve()))
    return entries


# ----------------------------------------------------------------------------------- one entry
def entry_overrides(spec: BenchmarkSpec, entry: EntrySpec, seed: int, out: Path) -> list[str]:
    """The ``--set`` lines that put an entry on the benchmark's data, split, budget and inference."""
    data = spec.data
    sets = [f"data.root={data.root}", f"data.sources=[{', '.join(data.sources)}]",
            f"data.target={data.target}", f"data.dims={data.dims}", f"data.splits_file={out / 'splits.json'}",
            f"data.cache_dir={out / 'cache'}", f"seed={seed}", f"device={spec.device}",
            "logging.progress=false", "logging.tensorboard=false", "logging.samples=false",
            f"inference.samples={spec.inference.samples}", f"inference.seed={spec.inference.seed}",
            f"name={entry.name}"]
    if data.layout is not None:
        sets.append(f"data.layout={data.layout}")
    if spec.inference.steps is not None:
        sets.append(f"inference.steps={spec.inference.steps}")
    steps = spec.budget.steps or 10**7  # a minutes-only budget: the clock stops it
    sets += [f"optim.steps={steps}", "optim.epochs=null", f"validation.every={steps}",
             f"checkpoint.every={max(1, min(steps, 200))}"]
    if spec.budget.batch_size is not None:
        sets.append(f"optim.batch_size={spec.budget.batch_size}")
    if entry.backbone is not None:
        sets += [f"backbone.name={entry.backbone.name}", f"backbone.args={json.dumps(entry.backbone.args)}"]
    return sets + [s.replace("{runs}", str(out / "runs")) for s in entry.set]


def write_split(spec: BenchmarkSpec, out: Path) -> dict[str, list[str]]:
    """One subject-level split for every entry (made once, then read back: adding entries keeps it)."""
    from medtrans.data.layouts import open_dataset
    from medtrans.data.splits import load_splits, make_splits, save_splits

    needed = [*spec.data.sources, spec.data.target]
    dataset = open_dataset(spec.data.root, layout=spec.data.layout).require(needed)
    path = out / "splits.json"
    if path.is_file():
        return load_splits(path, dataset.ids)
    fractions = (spec.data.splits.train, spec.data.splits.val, spec.data.splits.test)
    splits = make_splits(dataset.ids, fractions, seed=spec.seeds[0])
    save_splits(splits, path, seed=spec.seeds[0], fractions=fractions)
    return splits


def _run_state(run: Path) -> dict[str, Any] | None:
    state = run / "checkpoints" / "last" / "state.json"
    return json.loads(state.read_text()) if state.is_file() else None


#: seconds trained by earlier sessions of an entry (kept while training, so a killed session counts)
CLOCK_FILE = "train_clock.json"


class _TrainClock:
    """Saves an entry's training seconds every ``every`` s, so a minutes budget spans resumed sessions."""

    def __init__(self, run: Path, every: float = 2.0) -> None:
        import threading

        self.path = run / CLOCK_FILE
        self.before = float(json.loads(self.path.read_text())["seconds"]) if self.path.is_file() else 0.0
        self.every = every
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)

    @property
    def session(self) -> float:
        return time.perf_counter() - self.start

    def save(self) -> None:
        if self.path.parent.is_dir():
            write_json(self.path, {"seconds": self.before + self.session})

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.save()

    def __enter__(self) -> _TrainClock:
        self.start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.save()


def _exit_with_parent(every: float = 0.2) -> None:
    """End this child within ``every`` s of the harness that started it being killed: an orphan would go
    on training into (or predicting from) the run folder that the re-run resumes."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(every)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _resumable_state(run: Path) -> dict[str, Any] | None:
    """The run's last checkpoint state; a folder left by an attempt killed before its first checkpoint
    holds nothing to resume and is cleared so training can start there."""
    state = _run_state(run)
    if state is None and run.exists():
        import shutil

        shutil.rmtree(run)
    return state


def run_entry(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume), predict and evaluate one entry × seed; the child process's whole job."""
    import resource

    import torch

    from medtrans.config import load_config
    from medtrans.engine.trainer import train

    run = Path(job["run"])
    config = load_config(job["recipe"], job["sets"])
    state = _resumable_state(run)
    record: dict[str, Any] = {"train_seconds_session": 0.0}
    if not (run / "finished.json").is_file():
        clock = _TrainClock(run)
        spent = clock.before
        left = None if job["minutes"] is None else job["minutes"] * 60 - spent
        spent_budget = left is not None and left <= 0
        trained = state is not None and (state["step"] >= state["total_steps"] or spent_budget)
        if not trained:
            with clock:
                train(config, run_dir=run if state is None else None,
                      resume=run if state is not None else None, time_limit=left)
            record["train_seconds_session"] = clock.session
            spent += clock.session
        write_json(run / "finished.json", {"steps": _run_state(run)["step"], "train_seconds": spent,
                                           "resumed_from_step": None if state is None else state["step"]})
    finished = json.loads((run / "finished.json").read_text())
    record.update(train_steps=finished["steps"], train_seconds=finished["train_seconds"],
                  train_s_per_step=finished["train_seconds"] / max(1, finished["steps"]),
                  resumed_from_step=finished["resumed_from_step"])
    if job["evaluate"]:
        record.update(_predict_and_evaluate(job, run))
    record["work_seconds"] = record["train_seconds_session"] + sum(
        record[v]["predict_seconds"] + record[v]["evaluate_seconds"]
        for v in ("mean", "single") if v in record)
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        record["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return record


def _predict_and_evaluate(job: dict[str, Any], run: Path) -> dict[str, Any]:
    from medtrans.engine.evaluator import evaluate
    from medtrans.engine.predictor import Predictor
    from medtrans.engine.run import load_trained

    method, _, _ = load_trained(run, which="last")
    record: dict[str, Any] = {"parameters": sum(p.numel() for p in method.parameters())}
    # a one-pass method gives the same volume every time: one pass, not a mean of identical samples
    variants = {"mean": job["samples"] if method.stochastic else 1}
    if method.stochastic and job["samples"] > 1:
        variants["single"] = 1
    subjects = [Path(job["root"]) / s for s in job["test"]]
    for variant, samples in variants.items():
        predictor = Predictor.from_run(run, which="last", device=job["device"], samples=samples,
                                       seed=job["seed"], steps=job["steps"] if method.default_steps else None)
        folder = run / f"pred_{variant}"
        start = time.perf_counter()
        predictor.predict_paths(subjects, folder)
        predicted = time.perf_counter()
        result = evaluate(folder, job["root"], mask=job["mask"], preset=job["preset"])
        result.write(run / ("eval" if variant == "mean" else "eval_single"))
        steps = method.resolve_steps(predictor.sampling.steps)  # None: the method's default, named
        record[variant] = {"samples": samples, "s_per_volume": (predicted - start) / len(subjects),
                           # the predictor's own instance: vqar counts its passes while sampling
                           "evaluations_per_voxel": predictor.method.evaluations(steps) * samples,
                           "steps": steps, "per_subject": result.per_subject,
                           "predict_seconds": predicted - start,
                           "evaluate_seconds": time.perf_counter() - predicted}
    return record


def select_entries(entries: list[EntrySpec], only: list[str] | None, spec_path: str | os.PathLike
                   ) -> list[EntrySpec]:
    """The entries named in ``only`` (all when None), in the spec's order; an unknown name is an error."""
    if not only:
        return entries
    names = [e.name for e in entries]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise MedtransError(spec_path, f"no entry named {', '.join(map(repr, unknown))}",
                            f"use one of: {', '.join(names)}")
    return [e for e in entries if e.name in only]


def run_benchmark(spec_path: str | os.PathLike, out: str | os.PathLike,
                  progress: Any = None, only: list[str] | None = None) -> dict[str, Any]:
    """Run every entry × seed not yet done (or only the entries named in ``only``: the leaderboard then
    ranks those and the baselines); returns ``{entry_key: record}`` (also written per entry)."""
    harness_start = time.perf_counter()
    spec, entries = load_spec(spec_path)
    entries = select_entries(entries, only, spec_path)
    out = Path(out).resolve()
    (out / "entries").mkdir(parents=True, exist_ok=True)
    splits = write_split(spec, out)
    records: dict[str, Any] = _baselines(spec, splits, out) if spec.baselines else {}
    ran: list[str] = []  # entries run by this call (the others were done before)
    for entry in entries:
        for seed in spec.seeds:
            key = entry.name if len(spec.seeds) == 1 else f"{entry.name}-s{seed}"
            path = out / "entries" / f"{key}.json"
            if path.is_file() and json.loads(path.read_text()).get("status") == "done":
                records[key] = json.loads(path.read_text())
                continue
            if progress is not None:
                progress(key)
            job = {"run": str(out / "runs" / key), "out": str(out), "recipe": str(entry.recipe),
                   "sets": entry_overrides(spec, entry, seed, out), "minutes": spec.budget.minutes,
                   "evaluate": entry.evaluate, "samples": spec.inference.samples,
                   "seed": spec.inference.seed, "steps": spec.inference.steps, "device": spec.device,
                   "root": str(spec.data.root), "test": splits["test"], "mask": spec.data.mask,
                   "preset": spec.preset}
            start = time.perf_counter()
            record = _run_child(job)
            record.update(entry=entry.name, seed=seed, recipe=str(entry.recipe), evaluate=entry.evaluate,
                          wall_seconds=time.perf_counter() - start)
            write_json(path, record)
            records[key] = record
            ran.append(key)
    _write_results(spec, out, records)
    wall = time.perf_counter() - harness_start
    work = sum(records[k].get("work_seconds", 0.0) for k in ran)
    write_json(out / "harness.json", {
        "spec": str(Path(spec_path).resolve()), "primary": spec.primary, "preset": spec.preset,
        "inference": spec.inference.model_dump(), "entries_run": ran,
        # this call, start to end (spec, split, children, leaderboard and page)
        "wall_seconds": wall,
        # the children's wall time: work + process start, imports, building models
        "entries_seconds": sum(records[k].get("wall_seconds", 0.0) for k in ran),
        # train + predict + evaluate, timed inside the children
        "work_seconds": work, "overhead": wall / work - 1 if work > 0 else None})
    return records


def _baselines(spec: BenchmarkSpec, splits: dict[str, list[str]], out: Path) -> dict[str, Any]:
    """The baselines' records: read back when scored before (they depend on the split only), else fitted."""
    from medtrans.engine.baselines import BASELINES, run_baselines

    paths = {f"baseline-{name}": out / "entries" / f"baseline-{name}.json" for name in BASELINES}
    if all(p.is_file() for p in paths.values()):
        return {k: json.loads(p.read_text()) for k, p in paths.items()}
    records = run_baselines(spec.data.root, spec.data.layout, spec.data.sources, spec.data.target, splits,
                            spec.data.mask, spec.preset, out / "baselines", seed=spec.seeds[0])
    for key, record in records.items():
        write_json(paths[key], record)
    return records


def conventions(spec: BenchmarkSpec) -> list[str]:
    """What the numbers mean, stated on the page and in the JSON."""
    from medtrans.engine.baselines import BASELINES
    from medtrans.metrics.presets import get_preset

    preset = get_preset(spec.preset)
    mask = spec.data.mask or "the dataset's own masks (mask.nii.gz per subject)"
    budget = " and ".join(x for x in (f"{spec.budget.steps} steps" if spec.budget.steps else "",
                                       f"{spec.budget.minutes} min" if spec.budget.minutes else "") if x)
    return [
        f"Task {'+'.join(spec.data.sources)} → {spec.data.target} ({spec.data.dims}); every entry trained on "
        f"the same subject-level split (splits.json) with the same budget ({budget}), seeds {spec.seeds}.",
        f"Preset {preset.name}: {preset.summary}. Mask: {mask}. Units: the target's (HU for CT).",
        f"Stochastic methods: the N-mean columns are the mean of {spec.inference.samples} samples per voxel "
        f"(seed {spec.inference.seed}); '1 sample' is one draw. One-pass methods have one variant.",
        *(["Baselines (no training beyond an intensity map; fitted on the training subjects inside the "
           "mask, applied voxel by voxel): " + "; ".join(f"baseline-{k}: {how}" for k, (_, how)
                                                       in BASELINES.items())] if spec.baselines else []),
        "Statistics over test subjects: means with 95% percentile-bootstrap CIs; p: two-sided paired "
        "Wilcoxon signed-rank against the best entry of that metric, Holm-corrected across entries.",
        "Costs: parameters of every network of the method; train s/step: wall time of training / steps; "
        "peak RSS: the entry's child process (train + predict + evaluate); s/volume: prediction of one "
        "test volume, file to file; NFE/voxel: network evaluations per voxel (steps × samples).",
    ]


def _write_results(spec: BenchmarkSpec, out: Path, records: dict[str, Any]) -> None:
    from medtrans.engine.leaderboard import leaderboard, write_leaderboard
    from medtrans.report.benchmark import write_benchmark_page

    board = leaderboard(records, primary=spec.primary)
    board["conventions"] = conventions(spec)
    write_leaderboard(board, out)
    write_benchmark_page(out, board, records, board["conventions"], spec.primary,
                         f"medtrans benchmark: {spec.name}")


def _run_child(job: dict[str, Any]) -> dict[str, Any]:
    """``run_entry`` in a fresh Python process; a failure is recorded with its last error line."""
    Path(job["run"]).parent.mkdir(parents=True, exist_ok=True)
    job_file = Path(job["run"] + ".job.json")
    write_json(job_file, job)
    result_file = Path(job["run"] + ".result.json")
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "medtrans.engine.benchmark", str(job_file), str(result_file)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0 or not result_file.is_file():
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {"status": "failed", "error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return {"status": "done", **json.loads(result_file.read_text())}


def _child_main(job_file: str, result_file: str) -> None:
    _exit_with_parent()
    job = json.loads(Path(job_file).read_text())
    write_json(result_file, run_entry(job))


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
