"""A bundle end to end in each backend and precision: clips per second and what each costs in sound.

    python benchmarks/end_to_end.py --bundle B [--prompts examples/prompts.txt] [--rounds 3]
        [--configs cpu:fp32 cpu:int8 openvino:fp32 openvino:bf16 openvino:int8-bf16 auto:auto]
        [--data corpus/manifest.jsonl --eval-limit 100] [--threads 2] [--work W] [--json out.json]

Speed: every configuration (``backend:precision``) is one whole ``reaudio generate`` process on the
prompt file, start-up included, as a user runs it. The configurations take turns, their order rotated
each round so that a slow spell of a noisy machine falls on all alike; each gets the median of its
rounds and its ratio to the first configuration. The clips of every round are compared with the
same configuration's first round: a configuration that does not repeat its own audio is reported.

Sound (with ``--data``): ``reaudio eval`` of each configuration on the first ``--eval-limit`` test
captions: FAD, KL and CLAP score, beside the copy-the-top-1-neighbour baseline and the real-vs-real
floor on the same clips. Evaluations already in the work folder for the same bundle, backend and
number of clips are reused (they take minutes and do not depend on load); timings never are.

A configuration that cannot run (an int8 precision on a bundle without ``reaudio quantize``'s
graphs, OpenVINO not installed) is refused before anything is timed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from reaudio.engine.bundle.manifest import read_bundle_manifest
from reaudio.engine.jobs.bench import describe_cpu, machine_info
from reaudio.engine.stages.backends import BACKENDS, INT8_PRECISIONS, PRECISIONS, resolve_backend, stages_run_as

DEFAULT_CONFIGS = ("cpu:fp32", "cpu:int8", "openvino:fp32", "openvino:bf16", "openvino:int8-bf16", "auto:auto")


@dataclass(frozen=True)
class Config:
    backend: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"

    @property
    def slug(self) -> str:
        return f"{self.backend}-{self.precision}"

    def args(self) -> list[str]:
        return ["--backend", self.backend, "--precision", self.precision]


def parse_config(text: str) -> Config:
    backend, sep, precision = text.partition(":")
    if not sep or backend not in BACKENDS or precision not in PRECISIONS:
        raise ValueError(
            f"configuration {text!r}: write BACKEND:PRECISION, BACKEND one of {', '.join(BACKENDS)}, "
            f"PRECISION one of {', '.join(PRECISIONS)} (e.g. openvino:bf16)"
        )
    return Config(backend, precision)


def check_runnable(bundle: Path, configs: list[Config]) -> None:
    """Refuse, before minutes of timing, a configuration the bundle or this machine cannot run."""
    manifest = read_bundle_manifest(bundle)
    has_int8 = any(spec.int8_file for spec in manifest.stages.values())
    problems = []
    for c in configs:
        if c.precision in INT8_PRECISIONS and not has_int8:
            problems.append(f"{c.name}: {bundle} has no int8 graphs (make them with `reaudio quantize`)")
        if c.backend == "openvino" and importlib.util.find_spec("openvino") is None:
            problems.append(f"{c.name}: the OpenVINO runtime is not installed (pip install 'reaudio[openvino]')")
    if len(set(configs)) != len(configs):
        problems.append("a configuration is listed twice")
    if problems:
        raise SystemExit("cannot run:\n  " + "\n  ".join(problems))


def describe_stages(bundle: Path, config: Config) -> str:
    """The backend ``auto`` resolves to here and what each stage computes in, e.g. 'openvino: bf16'
    or 'cpu: denoiser int8, decoder int8, others fp32'."""
    backend = resolve_backend(config.backend, bundle)
    per = stages_run_as(read_bundle_manifest(bundle), backend, config.precision)
    common = max(set(per.values()), key=list(per.values()).count)
    odd = [f"{name} {p}" for name, p in per.items() if p != common]
    return f"{backend}: " + (", ".join(odd) + f", others {common}" if odd else common)


def rotated(configs: list, round_index: int) -> list:
    """Round r starts at the r-th configuration, so none is always first (cold caches) or last."""
    k = round_index % len(configs)
    return configs[k:] + configs[:k]


def reaudio(*args: str) -> list[str]:
    return [sys.executable, "-m", "reaudio", *args]


def library_digest(folder: Path) -> tuple[int, str]:
    """(clips written, one digest of every clip's audio by key) from a library's index."""
    entries = [json.loads(line) for line in (folder / "library.jsonl").read_text().splitlines() if line.strip()]
    digest = hashlib.sha256("".join(sorted(f"{e['key']}={e['sha256']};" for e in entries)).encode()).hexdigest()
    return len(entries), digest


def time_generate(bundle: Path, prompts: Path, out: Path, config: Config, threads: int | None) -> dict:
    """One whole ``reaudio generate`` process: wall seconds, clips written and their digest."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = reaudio("generate", str(prompts), "--out", str(out), "--bundle", str(bundle), *config.args(), "-q")
    if threads:
        cmd += ["--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{config.name}: reaudio generate failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    clips, digest = library_digest(out)
    return {"seconds": seconds, "clips": clips, "digest": digest}


def time_rounds(
    bundle: Path, prompts: Path, work: Path, configs: list[Config], rounds: int, threads: int | None
) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {c.name: [] for c in configs}
    for r in range(rounds):
        for c in rotated(configs, r):
            run = time_generate(bundle, prompts, work / f"gen-{c.slug}", c, threads)
            runs[c.name].append(run)
            print(f"round {r + 1}/{rounds}: {c.name} {run['seconds']:.1f} s, {run['clips']} clips", flush=True)
    return {name: summarise(rs) for name, rs in runs.items()}


def summarise(runs: list[dict]) -> dict:
    clips = {r["clips"] for r in runs}
    if len(clips) != 1:
        raise RuntimeError(f"rounds wrote different numbers of clips: {sorted(clips)}")
    seconds = [r["seconds"] for r in runs]
    median = statistics.median(seconds)
    return {
        "seconds": [round(s, 2) for s in seconds],
        "median_s": round(median, 2),
        "clips": clips.pop(),
        "clips_per_s": round(runs[0]["clips"] / median, 4),
        "same_audio_every_round": len({r["digest"] for r in runs}) == 1,
    }


def reusable(results: Path, bundle: Path, config: Config, limit: int) -> dict | None:
    """An earlier evaluation of this configuration on this bundle and as many clips, if there is one."""
    if not results.is_file():
        return None
    metrics = json.loads(results.read_text())
    settings = metrics.get("settings", {})
    same_bundle = Path(settings.get("bundle", "")).resolve() == bundle.resolve()
    same_backend = config.backend == "auto" or settings.get("backend") == config.backend
    if same_bundle and same_backend and metrics.get("clips") == limit:
        return metrics
    return None


def evaluate(bundle: Path, data: Path, limit: int, work: Path, config: Config, threads: int | None) -> dict:
    out = work / f"eval-{config.slug}"
    metrics = reusable(out / "results.json", bundle, config, limit)
    if metrics is None:
        print(f"evaluating {config.name} on {limit} test captions …", flush=True)
        cmd = reaudio("eval", "--bundle", str(bundle), "--data", str(data), "--limit", str(limit), "--out", str(out))
        cmd += [*config.args(), "-q"] + (["--threads", str(threads)] if threads else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{config.name}: reaudio eval failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        metrics = json.loads((out / "results.json").read_text())
    else:
        print(f"{config.name}: reusing the evaluation in {out}", flush=True)
    return {
        "fad": metrics["fad"],
        "kl": metrics.get("kl"),
        "clap_score": metrics.get("clap_score"),
        "clips": metrics["clips"],
        "backend": metrics["settings"]["backend"],
        "copy_top1_fad": metrics["copy_top1"]["fad"],
        "real_floor_fad": metrics["real_floor"]["fad"],
    }


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def format_table(report: dict) -> str:
    """The report as markdown: one row per configuration, speed beside sound."""
    first = report["configs"][0]
    base = report["speed"][first]["median_s"] if report["speed"] else None
    lines = [
        f"{report['bundle']}: `reaudio generate` of {report['prompts']} ({report['clips']} clips), whole process, "
        f"median of {report['rounds']} rotated rounds; {describe_cpu(report['machine'])}; "
        f"{report['threads'] or 'all'} thread(s); {report['machine']['date']}",
        "",
        f"| configuration | seconds (rounds) | clips/s | vs {first} | FAD ↓ | KL ↓ | CLAP ↑ | stages run as |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in report["configs"]:
        speed, sound = report["speed"].get(name), report["sound"].get(name, {})
        if speed:
            rounds = ", ".join(f"{s:.1f}" for s in speed["seconds"])
            flag = "" if speed["same_audio_every_round"] else " (audio differed between rounds)"
            ratio = base / speed["median_s"]
            timing = f"{speed['median_s']:.1f} ({rounds}){flag} | {speed['clips_per_s']:.3f} | {ratio:.2f}×"
        else:
            timing = "— | — | —"
        lines.append(
            f"| {name} | {timing} | {_cell(sound.get('fad'), 1)} | {_cell(sound.get('kl'), 2)} "
            f"| {_cell(sound.get('clap_score'), 3)} | {report['runs_as'][name]} |"
        )
    if report["sound"]:
        ref = next(iter(report["sound"].values()))
        lines += [
            "",
            f"References on the same {ref['clips']} test clips: copy the top-1 neighbour FAD "
            f"{ref['copy_top1_fad']:.1f}; real vs real {ref['real_floor_fad']:.1f}.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, default=Path("examples/prompts.txt"))
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), metavar="BACKEND:PRECISION")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (0: sound only)")
    parser.add_argument("--threads", type=int, help="CPU threads per process (default: all cores)")
    parser.add_argument("--data", type=Path, help="corpus clip list: score each configuration's sound")
    parser.add_argument("--eval-limit", type=int, default=100, help="test captions scored per configuration")
    parser.add_argument("--work", type=Path, default=Path("/tmp/reaudio-end-to-end"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        configs = [parse_config(c) for c in args.configs]
    except ValueError as e:
        parser.error(str(e))
    if args.rounds < 0 or args.eval_limit < 2:
        parser.error("--rounds must be ≥ 0 and --eval-limit ≥ 2")
    if not args.prompts.is_file():
        parser.error(f"--prompts {args.prompts}: no such file")
    check_runnable(args.bundle, configs)
    args.work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    print(f"machine: {describe_cpu(machine)}", flush=True)

    speed = time_rounds(args.bundle, args.prompts, args.work, configs, args.rounds, args.threads) if args.rounds else {}
    sound = {}
    if args.data:
        sound = {c.name: evaluate(args.bundle, args.data, args.eval_limit, args.work, c, args.threads) for c in configs}
    report = {
        "bundle": str(args.bundle),
        "prompts": str(args.prompts),
        "clips": next(iter(speed.values()))["clips"] if speed else None,
        "rounds": args.rounds,
        "threads": args.threads,
        "configs": [c.name for c in configs],
        "runs_as": {c.name: describe_stages(args.bundle, c) for c in configs},
        "machine": machine,
        "speed": speed,
        "sound": sound,
    }
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
