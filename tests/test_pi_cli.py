"""The Raspberry Pi path: predict's inputs (globs, stdin, --watch), --bench, the thread default,
torch-free usage errors and imports, the on-device audit against a host reference (an unreadable
image said on the terminal, report files readable as the umask allows), and the host half of
scripts/pi-e2e.sh."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import real_images, require_toolchain, textured_image

from edge_convnext import cli, pipeline, predict

REPO = Path(__file__).resolve().parents[1]
# Run as a Pi install would: torch, transformers and coremltools absent. A meta-path finder
# makes importing them fail as a missing package does.
BLOCK_TORCH_SIDE = (
    "import sys\n"
    "class _Absent:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in {'torch', 'transformers', 'coremltools', 'safetensors'}:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, _Absent())\n"
)
HEAVY = ("torch", "transformers", "coremltools")


@pytest.fixture(scope="module")
def tflite_model(tiny_checkpoints, tmp_path_factory) -> Path:
    """A tiny ConvNeXt V1 exported to an fp32 .tflite (+ sidecar)."""
    require_toolchain("tflite")
    out = tmp_path_factory.mktemp("pi_tflite")
    return pipeline.build(
        str(tiny_checkpoints["convnext-tiny-224"]), "tflite", "fp32", out, progress=False
    )


def run_cli(*args, stdin: str | None = None, prelude: str = "", timeout: float = 120):
    """``edge-convnext ARGS`` in a fresh interpreter; returns the CompletedProcess."""
    code = prelude + "import sys; from edge_convnext.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_glob_and_stdin_inputs(capsys, tflite_model, tmp_path):
    photos = real_images()
    assert cli.main(["predict", str(tflite_model), str(photos[0].parent / "*.jpg"), "--json"]) == 0
    by_glob = json_lines(capsys.readouterr().out)
    assert [r["image"] for r in by_glob] == sorted(str(p) for p in photos)
    assert cli.main(["predict", str(tflite_model), str(tmp_path / "*.png"), "--json"]) == 1
    assert json_lines(capsys.readouterr().out)[0]["error"] == "no files match this pattern"

    listing = "\n".join([str(photos[0]), "", str(tmp_path / "gone.jpg"), str(photos[1])]) + "\n"
    result = run_cli("predict", tflite_model, "-", "--json", stdin=listing)
    rows = json_lines(result.stdout)
    assert result.returncode == 1, result.stderr  # the missing one fails, the others classify
    assert [r["image"] for r in rows] == [
        str(photos[0]),
        str(tmp_path / "gone.jpg"),
        str(photos[1]),
    ]
    assert rows[1]["error"] == "no such file or directory"
    assert rows[0]["top_k"] == by_glob[[r["image"] for r in by_glob].index(str(photos[0]))]["top_k"]
    assert "runtime ai-edge-litert" in result.stderr or "runtime tflite-runtime" in result.stderr


def test_stdin_paths_are_read_lazily():
    lines = iter(["a.jpg\n", "\n", "b c.jpg\r\n"])
    assert list(predict.read_paths(lines)) == ["a.jpg", "b c.jpg"]


def test_bench_reports_latency_and_peak_rss(capsys, tflite_model):
    photo = str(real_images()[0])
    status = cli.main(["predict", str(tflite_model), photo, "--bench", "4", "--warmup", "2"])
    assert status == 0
    assert "p50" in capsys.readouterr().out
    assert cli.main(["predict", str(tflite_model), "--bench", "5", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)["bench"]
    assert bench["runs"] == 5 and bench["warmup"] == 3 and bench["image"] == "(seeded noise)"
    assert 0 < bench["min_ms"] <= bench["p50_ms"] <= bench["p90_ms"] <= bench["max_ms"]
    assert bench["peak_rss_mb"] > 10 and bench["threads"] == predict_threads()
    assert bench["runtime"].split()[0] in ("ai-edge-litert", "tflite-runtime")


def predict_threads() -> int:
    from edge_convnext.targets.tflite import default_threads

    return default_threads()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bench", "2", "a.jpg", "b.jpg"], "times one image"),
        (["--watch", "/nonexistent-dir"], "no such directory"),
        (["--max-files", "2", "a.jpg"], "go with --watch"),
        ([], "at least one IMAGE"),
    ],
)
def test_predict_flag_misuse_is_a_usage_error(capsys, tflite_model, args, message):
    assert cli.main(["predict", str(tflite_model), *args]) == 2
    assert message in capsys.readouterr().err


THREAD_COUNT = (
    "import os, sys\n"
    "from pathlib import Path\n"
    "import numpy as np\n"
    "from edge_convnext.targets import tflite\n"
    "before = len(os.listdir('/proc/self/task'))\n"
    "threads = None if sys.argv[2] == 'default' else int(sys.argv[2])\n"
    "runner = tflite.load(Path(sys.argv[1]), threads=threads)\n"
    "runner(np.zeros((1, 224, 224, 3), np.uint8))\n"
    "print(runner.threads, len(os.listdir('/proc/self/task')) - before)\n"
)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_threads_default_to_every_core_counted_in_the_runtime(tflite_model):
    """LiteRT runs ``num_threads - 1`` pool workers beside the caller: count them."""

    def count(threads: str) -> tuple[int, int]:
        result = subprocess.run(
            [sys.executable, "-c", THREAD_COUNT, str(tflite_model), threads],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        setting, new_threads = map(int, result.stdout.split())
        return setting, new_threads

    assert count("3") == (3, 2)  # the count is the runtime's own: 3 threads = 2 workers
    cores = len(os.sched_getaffinity(0))
    assert count("default") == (cores, cores - 1)


def test_watch_classifies_each_complete_file_once(tflite_model, tmp_path):
    """A real writer process: a slow chunked write, a temp name renamed into place, a dotfile,
    a file that was there before. Only the finished new images are classified, each once."""
    watched = tmp_path / "incoming"
    watched.mkdir()
    photo = real_images()[0]
    shutil.copy(photo, watched / "already-there.jpg")
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_convnext.cli",
            "predict",
            str(tflite_model),
            "--watch",
            str(watched),
            "--json",
            "--settle",
            "0.6",
            "--max-files",
            "2",
            "--watch-timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_line(watcher, "watching")
        writer = (
            "import os, sys, time, shutil\n"
            "src, d = sys.argv[1], sys.argv[2]\n"
            "data = open(src, 'rb').read()\n"
            "with open(os.path.join(d, 'slow.jpg'), 'wb') as f:\n"  # non-atomic, in chunks
            "    for i in range(0, len(data), len(data) // 8 + 1):\n"
            "        f.write(data[i:i + len(data) // 8 + 1]); f.flush(); time.sleep(0.15)\n"
            "open(os.path.join(d, '.hidden.jpg'), 'wb').write(data)\n"
            "with open(os.path.join(d, 'renamed.jpg.tmp'), 'wb') as f:\n"
            "    half = len(data) // 2\n"
            "    f.write(data[:half]); f.flush(); time.sleep(1.0); f.write(data[half:])\n"
            "os.rename(os.path.join(d, 'renamed.jpg.tmp'), os.path.join(d, 'renamed.jpg'))\n"
        )
        subprocess.run(
            [sys.executable, "-c", writer, str(photo), str(watched)], check=True, timeout=60
        )
        out, err = watcher.communicate(timeout=90)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    rows = json_lines(out)
    assert sorted(Path(r["image"]).name for r in rows) == ["renamed.jpg", "slow.jpg"]
    assert all("top_k" in r for r in rows), rows  # never a half-written file
    assert rows[0]["top_k"] == rows[1]["top_k"]  # both are the same photo, read whole


def _wait_for_line(process: subprocess.Popen, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if text in line:
            return
        if not line and process.poll() is not None:
            raise AssertionError(f"watcher exited: {process.stderr.read()}")
    raise AssertionError(f"no {text!r} on stderr")


def test_watch_generator_waits_for_a_settled_file(tmp_path):
    """With a fake clock: a growing file is not yielded until it has stayed put for settle."""
    now = [0.0]
    grow = []

    def sleep(seconds):
        now[0] += seconds
        if grow:
            grow.pop(0)()

    (tmp_path / "old.jpg").write_bytes(b"x")
    path = tmp_path / "new.jpg"
    grow += [lambda: path.write_bytes(b"a"), lambda: path.write_bytes(b"ab" * 1000)]
    found = predict.watch(
        tmp_path, interval=0.2, settle=0.5, timeout=5, clock=lambda: now[0], sleep=sleep
    )
    assert list(found) == [str(path)]
    assert now[0] >= 0.4 + 0.5  # seen at its last size at 0.4 s, then 0.5 s unchanged


def test_watch_names():
    assert predict.is_candidate("cat.JPG")
    for name in (".cat.jpg", "cat.jpg.tmp", "cat.jpg.part", "cat.jpg~", "notes.txt"):
        assert not predict.is_candidate(name), name


def test_not_an_artifact_without_torch_is_a_usage_error_naming_the_extra(tflite_model, tmp_path):
    photo = real_images()[0]
    typo = str(tflite_model).removesuffix(".tflite") + ".tflit"
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for model in (typo, checkpoint, "facebook/convnext-tiny-224"):
        result = run_cli("predict", model, photo, prelude=BLOCK_TORCH_SIDE)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "edge-convnext[torch]" in result.stderr and "not an artifact" in result.stderr
    assert "no such file" in run_cli("predict", typo, photo, prelude=BLOCK_TORCH_SIDE).stderr


def test_missing_tflite_is_no_such_file_not_no_sidecar(tmp_path):
    result = run_cli("predict", tmp_path / "gone.tflite", real_images()[0])
    assert result.returncode == 2
    assert "no such" in result.stderr and "sidecar" not in result.stderr


def test_predict_bench_inspect_and_audit_import_no_torch_transformers_coremltools(
    tflite_model, tmp_path
):
    """What a Pi runs, with the torch side made unimportable; none of it is even imported."""
    prelude = BLOCK_TORCH_SIDE + (
        "import atexit\n"
        f"atexit.register(lambda: print('HEAVY', sorted(set(sys.modules) & {set(HEAVY)}),"
        " file=sys.stderr))\n"
    )
    data = tmp_path / "val"  # imagefolder layout: one wnid folder per class
    for wnid, photo in zip(("n02123159", "n03063599"), real_images(), strict=True):
        (data / wnid).mkdir(parents=True)
        shutil.copy(photo, data / wnid)
    (data / "n01440764").mkdir()
    textured_image(3).save(data / "n01440764" / "textured.jpg")
    host = run_cli(
        "audit", tflite_model, "--data", data, "--out", tmp_path / "host", "--no-progress"
    )
    assert host.returncode == 0, host.stderr
    commands = [
        ("predict", tflite_model, real_images()[0], "--json"),
        ("predict", tflite_model, "--bench", "2"),
        ("inspect", tflite_model, "--json"),
        (
            "audit",
            tflite_model,
            "--data",
            data,
            "--manifest",
            tmp_path / "host" / "manifest.json",
            "--reference",
            tmp_path / "host" / "predictions.npz",
            "--out",
            tmp_path / "pi",
            "--no-progress",
        ),
    ]
    for args in commands:
        result = run_cli(*args, prelude=prelude)
        assert result.returncode == 0, (args, result.stderr)
        assert "HEAVY []" in result.stderr, (args, result.stderr)


def test_predict_help_is_quick_to_import():
    """`predict --help` builds only predict's parser: no numpy, Pillow or target registry."""
    code = (
        "import sys\nfrom edge_convnext.cli import main\n"
        "try:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('numpy', 'PIL', 'edge_convnext.targets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.splitlines()[-1] == "[]", result.stdout


def test_one_photo_predict_imports_no_package_metadata(tflite_model):
    """Naming the runtime reads its ``__version__``: ``importlib.metadata`` (~18 ms of a ~170 ms
    one-photo predict on the host, bench/startup.py) stays unimported."""
    prelude = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('METADATA', 'importlib.metadata' in sys.modules,"
        " file=sys.stderr))\n"
    )
    result = run_cli("predict", tflite_model, real_images()[0], "--json", prelude=prelude)
    assert result.returncode == 0, result.stderr
    assert "METADATA False" in result.stderr and "runtime ai-edge-litert 2." in result.stderr


def test_pi_e2e_script_host_half_checks(tmp_path):
    """CI runs the script's --check (seconds): bash syntax, the host imports, and the embedded
    Python that otherwise runs only minutes into an emulated run. The emulated run is by hand."""
    script = REPO / "scripts" / "pi-e2e.sh"

    def check(path: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHON": sys.executable},
        )

    result = check(script, "--check")
    assert result.returncode == 0, result.stderr
    assert "syntax ok" in result.stdout and "embedded Python blocks compile" in result.stdout
    broken = tmp_path / "pi-e2e.sh"
    broken.write_text(script.read_text().replace("summary = {}", "summary = {", 1))
    assert check(broken, "--check").returncode != 0
    assert check(script, "--no-such-flag").returncode == 2


def test_pi_extra_is_torch_free():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {r.split("=")[0].split("<")[0].split(">")[0].strip() for r in extras["pi"]}
    assert "ai-edge-litert" in names and not names & {"torch", "transformers", "coremltools"}


def test_tflite_runtime_is_used_when_litert_is_absent(tflite_model, tmp_path):
    """A stand-in ``tflite_runtime`` (LiteRT's Interpreter under that name) with ai_edge_litert
    made unimportable: the runner falls back to it, says so, and predicts the same."""
    fake = tmp_path / "site" / "tflite_runtime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '2.14.0'\n")
    (fake / "interpreter.py").write_text("import builtins\nInterpreter = builtins._interpreter\n")
    prelude = (
        f"import sys, builtins; sys.path.insert(0, {str(fake.parent)!r})\n"
        "import ai_edge_litert.interpreter as real\n"
        "builtins._interpreter = real.Interpreter\n"
        "sys.modules['ai_edge_litert.interpreter'] = None\n"  # import now fails: absent
    )
    photo = real_images()[0]
    result = run_cli("predict", tflite_model, photo, "--json", prelude=prelude)
    assert result.returncode == 0, result.stderr
    assert "runtime tflite-runtime 2.14.0" in result.stderr
    litert = run_cli("predict", tflite_model, photo, "--json")
    assert "runtime ai-edge-litert" in litert.stderr
    np.testing.assert_allclose(
        [t["score"] for t in json_lines(result.stdout)[0]["top_k"]],
        [t["score"] for t in json_lines(litert.stdout)[0]["top_k"]],
    )
    forced = run_cli(
        "predict",
        tflite_model,
        photo,
        prelude="import os; os.environ['EDGE_CONVNEXT_TFLITE_RUNTIME'] = 'nope'\n",
    )
    assert forced.returncode == 2 and "unknown runtime" in forced.stderr


def audit_cli(*args):
    code = "import os, sys; os.umask(0o022); from edge_convnext.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, "audit", *map(str, args), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_audit_against_a_host_reference_reports_problems_and_writes_readable_files(
    tflite_model, tmp_path
):
    data = tmp_path / "val"
    for wnid, photo in zip(("n02123159", "n03063599"), real_images(), strict=True):
        (data / wnid).mkdir(parents=True)
        shutil.copy(photo, data / wnid)
    (data / "n01440764").mkdir()
    textured_image(5).save(data / "n01440764" / "textured.jpg")

    host = audit_cli(tflite_model, "--data", data, "--out", tmp_path / "host")
    assert host.returncode == 0, host.stderr
    for name in ("manifest.json", "predictions.npz", "report.json"):
        mode = stat.S_IMODE(os.stat(tmp_path / "host" / name).st_mode)
        assert mode & 0o044 == 0o044, f"{name} is {oct(mode)}: not readable by others"

    (data / "n01440764" / "broken.jpg").write_bytes(b"not a jpeg")
    pi = audit_cli(
        tflite_model,
        "--data",
        data,
        "--reference",
        tmp_path / "host" / "predictions.npz",
        "--out",
        tmp_path / "pi",
    )
    assert pi.returncode == 1, pi.stderr  # an unreadable image is a failure, said on stderr
    assert "could not be read" in pi.stderr and "Traceback" not in pi.stderr
    assert (tmp_path / "pi" / "report.json").exists()
