"""export.py --format hf: a trained run as a Hugging Face model folder that loads without this
repository. The folders of all three variants (one fold, an ensemble, a bundled recogniser) are
loaded in a subprocess whose sys.path holds only torch, transformers, safetensors and soundfile
(with the packages they need) and runs from another directory; there AutoModel and the folder's
pipeline give predict.py's probabilities; the model card gives results.json's metrics; bad
input is named (a too-short clip, non-finite audio), torchaudio's [channels, samples] arrays are
read with a note. Of runs whose encoders, recogniser, corpus and run folder are local, the
folders record none of their paths: the local text encoder and recogniser are bundled, or the
export is refused naming the flag (tests/test_export.py checks the ONNX export alike)."""
import importlib.metadata as metadata
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from transformers import AutoFeatureExtractor

import export
import predict
import run
from inference.hf_export import shared_results
from inference.recognizer import EmotionRecognizer, PredictError
from models.hf_model import FORMAT_VERSION, MMERForEmotionRecognition
from models.hf_pipeline import MMERAudioClassificationPipeline, PipelineInputError

REPO = Path(__file__).resolve().parents[1]
CLEAN_PACKAGES = ("torch", "transformers", "safetensors", "soundfile")
TRANSCRIPT = "I can't believe you did that!"
# folder -> (run, export flags, predict.py's flags for the same model)
FOLDERS = {"mmer_fold": ("mmer", ["--session", "2", "--include_text_encoder"], ["--session", "2"]),
           "mmer_ensemble": ("mmer", ["--ensemble", "--include_text_encoder"], ["--ensemble"]),
           "mmer_asr": ("mmer", ["--session", "1", "--asr", "WHISPER", "--include_text_encoder"],
                        ["--session", "1", "--asr", "WHISPER"]),
           "cai_sota": ("cai_sota", [], ["--session", "1"]),
           "unimodal_baseline": ("unimodal_baseline", [], ["--session", "1"])}
# wav2vec2-base's convolutional feature encoder (the tiny encoders copy it): kernels 10,3,3,3,3,2,2
# and strides 5,2,2,2,2,2,2 see 400 samples, 25 ms at 16 kHz, per frame (the wav2vec 2.0 paper).
BASE_CONV = ([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])
RECEPTIVE_FIELD = 400
# what the clean process does with each folder: the pipeline on a path with and without a
# transcript and on an array; AutoModel; and the refusals
CLEAN_SCRIPT = r"""
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
banned = [name for name in ("models", "dataio", "inference", "soxr", "pandas", "av", "sklearn")
          if importlib.util.find_spec(name) is not None]
import soundfile as sf
from transformers import AutoModel, pipeline
folders, wav, transcript, newer, stereo = json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
out = {"banned": banned, "folders": {}}
samples, rate = sf.read(wav, dtype="float32")
for name, folder in folders.items():
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    pipe = pipeline("audio-classification", model=folder, trust_remote_code=True, device="cpu")
    out["folders"][name] = {
        "class": type(model).__module__ + "." + type(model).__name__, "folds": len(model.folds),
        "given": pipe(wav, transcript=transcript, return_transcript=True),
        "missing": pipe(wav, return_transcript=True),
        "array": pipe(samples, sampling_rate=rate, transcript=transcript),
        "plain": pipe(wav, transcript=transcript), "stereo": pipe(stereo, transcript=transcript)}
    if name == "mmer_fold":
        two = __import__("numpy").stack([samples, samples], axis=1)
        for case, call in (("no_rate", lambda: pipe(samples)), ("no_soxr", lambda: pipe(two, sampling_rate=44100))):
            try:
                call()
                out[case] = None
            except Exception as err:
                out[case] = f"{type(err).__name__}: {err}"
try:
    AutoModel.from_pretrained(newer, trust_remote_code=True)
    out["newer"] = None
except Exception as err:
    out["newer"] = f"{type(err).__name__}: {err}"
print("RESULT " + json.dumps(out))
"""


def clean_site(folder: Path) -> Path:
    """A site folder linking only the distributions CLEAN_PACKAGES need (their requirements,
    recursively, without extras): what `pip install torch transformers safetensors soundfile`
    puts in a fresh environment."""
    seen, todo = {}, list(CLEAN_PACKAGES)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            seen[name] = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for spec in seen[name].requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    folder.mkdir(parents=True)
    for dist in seen.values():
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] not in ("..", "__pycache__")}:
            if not (folder / top).exists() and (base / top).exists():
                (folder / top).symlink_to(base / top)
    return folder


@pytest.fixture(scope="module")
def shared(demo, tmp_path_factory):
    """The three variants trained briefly (mmer on two folds), each exported as FOLDERS says, and
    what a process without this repository gets from those folders. mmer_asr's recogniser is a
    copy of the tiny Whisper (its config.json naming the folder it was saved from, as transformers
    4 wrote; with the download records `hf download --local-dir` leaves and a Trainer checkpoint's
    state), removed once exported: only the folder's own copy is left to transcribe."""
    root = tmp_path_factory.mktemp("share")
    runs = root / "runs"
    for variant, sessions in (("mmer", "1 2"), ("cai_sota", "1"), ("unimodal_baseline", "1")):
        run.main(demo.flags(run=variant, sessions=sessions, epochs=1, max_steps=2, save_path=runs))
    whisper = root / "recogniser" / "whisper"
    shutil.copytree(demo.whisper_model, whisper)
    config = json.loads((whisper / "config.json").read_text())
    (whisper / "config.json").write_text(json.dumps({**config, "_name_or_path": str(demo.whisper_model)}))
    (whisper / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (whisper / ".cache" / "huggingface" / "download" / "model.safetensors.metadata").write_text("0123abcd\n")
    (whisper / "trainer_state.json").write_text(json.dumps({"best_model_checkpoint": str(whisper)}))
    folders = {}
    for name, (variant, flags, _) in FOLDERS.items():
        folders[name] = root / "shared" / name
        flags = [str(whisper) if flag == "WHISPER" else flag for flag in flags]
        export.main([str(runs / variant), "--format", "hf", "--out", str(folders[name]), *flags])
    shutil.rmtree(whisper)
    cut = folders["mmer_cut"] = root / "shared" / "mmer_cut"   # the 2023 cut, which the pipeline applies too
    shutil.copytree(folders["mmer_fold"], cut)
    config = json.loads((cut / "config.json").read_text())
    config["model_config"]["max_audio_samples"] = 8000
    (cut / "config.json").write_text(json.dumps(config))
    newer = root / "newer"
    shutil.copytree(folders["unimodal_baseline"], newer)
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**config, "mmer_format": FORMAT_VERSION + 1}))  # folders of
    # uncalibrated runs are format 1, which this code reads like every format up to FORMAT_VERSION
    wavs = sorted(Path(demo.audio).glob("*.wav"))
    wav = str(wavs[0])
    left, right = sf.read(wavs[0], dtype="float32")[0], sf.read(wavs[1], dtype="float32")[0]
    stereo = root / "stereo.wav"   # two different channels: averaged, not one of them
    sf.write(stereo, np.stack([left[: len(right)], right[: len(left)]], axis=1), 16000)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-I", "-S", "-c", CLEAN_SCRIPT, str(clean_site(root / "site")),
                           json.dumps({k: str(v) for k, v in folders.items()}), wav, TRANSCRIPT, str(newer), str(stereo)],
                          cwd=elsewhere, capture_output=True, text=True, timeout=600,
                          env={"HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    clean = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    return {"root": root, "runs": runs, "folders": folders, "newer": newer, "wav": wav, "stereo": str(stereo),
            "clean": clean, "log": done.stderr, "whisper": str(demo.whisper_model), "bundled_whisper": whisper}


def predicted(shared, name: str, transcript: str | None, wav: str | None = None) -> dict:
    """predict.py's probabilities for the model the folder holds, {class: probability}, and its transcript."""
    variant, _, flags = FOLDERS[name]
    flags = [shared["whisper"] if flag == "WHISPER" else flag for flag in flags]
    table = predict.main(["--checkpoint_dir", str(shared["runs"] / variant), wav or shared["wav"], "--device", "cpu",
                          *flags, *(["--transcript", transcript] if transcript else [])])
    row = table.iloc[0]
    return {c[5:]: float(row[c]) for c in table.columns if c.startswith("prob_")}, row["transcript_source"]


def scores(entries) -> dict:
    return {entry["label"]: entry["score"] for entry in entries}


def test_the_folders_load_with_only_torch_transformers_safetensors_and_soundfile(shared):
    clean = shared["clean"]
    assert clean["banned"] == [], "the clean process could import the repository or its other dependencies"
    for name, got in clean["folders"].items():
        assert got["class"].startswith("transformers_modules.") and got["class"].endswith("MMERForEmotionRecognition")
        assert got["folds"] == (2 if name == "mmer_ensemble" else 1)
        if name not in FOLDERS:
            continue
        for name_ in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json", "hf_model.py",
                      "hf_pipeline.py", "base.py", "mmer.py", "fusion.py", "encoders.py"):
            assert (shared["folders"][name] / name_).is_file(), name_
    assert (shared["folders"]["mmer_fold"] / "text_encoder" / "model.safetensors").is_file()
    assert not (shared["folders"]["cai_sota"] / "text_encoder").exists()


@pytest.mark.parametrize("name", list(FOLDERS))
def test_the_pipeline_gives_predicts_probabilities_sorted(shared, name):
    """With a transcript, without one (the recorded recogniser, else the CTC head, as predict.py
    does, and said), and for an array: predict.py's probabilities to 1e-5, best first."""
    got = shared["clean"]["folders"][name]
    variant = FOLDERS[name][0]
    cases = {"given": TRANSCRIPT, "missing": None} if variant == "mmer" else {"given": None}
    for case, transcript in cases.items():
        expected, source = predicted(shared, name, transcript)
        pipeline_scores = got[case]["scores"]
        assert [e["score"] for e in pipeline_scores] == sorted((e["score"] for e in pipeline_scores), reverse=True)
        assert set(scores(pipeline_scores)) == set(expected)
        for label, probability in expected.items():
            assert scores(pipeline_scores)[label] == pytest.approx(probability, abs=1e-5), (case, label)
        assert pipeline_scores[0]["label"] == max(expected, key=expected.get)
        assert got[case]["transcript_source"] == (source if variant == "mmer" else "none")
    assert scores(got["array"]) == pytest.approx(scores(got["given"]["scores"]), abs=1e-6)
    assert scores(got["plain"]) == pytest.approx(scores(got["given"]["scores"]), abs=1e-6)
    expected, _ = predicted(shared, name, TRANSCRIPT if variant == "mmer" else None, shared["stereo"])
    assert scores(got["stereo"]) == pytest.approx(expected, abs=1e-5)   # channels averaged, as training reads them
    if name == "mmer_asr":
        assert got["missing"]["transcript_source"] == "asr"
    elif variant == "mmer":
        assert got["missing"]["transcript_source"] == "ctc"


def test_the_pipeline_cuts_the_audio_as_the_python_api_does(shared):
    """A run with the 2023 cut (max_audio_samples, here 0.5 s): the pipeline scores what
    EmotionRecognizer.from_pretrained scores, and not the whole recording."""
    recognizer = EmotionRecognizer.from_pretrained(shared["folders"]["mmer_cut"], device="cpu")
    expected = recognizer.predict(shared["wav"], TRANSCRIPT).probabilities
    got = scores(shared["clean"]["folders"]["mmer_cut"]["given"]["scores"])
    assert got == pytest.approx(expected, abs=1e-5)
    whole = scores(shared["clean"]["folders"]["mmer_fold"]["given"]["scores"])
    assert max(abs(got[c] - whole[c]) for c in got) > 1e-4
    assert sf.info(shared["wav"]).frames > 8000


def test_the_pipeline_says_which_transcript_it_read_and_names_bad_input(shared):
    log, clean = shared["log"], shared["clean"]
    assert "no transcript given: mmer reads its own CTC head's greedy transcript" in log
    assert "no transcript given: mmer reads the recorded speech recogniser's transcript" in log
    assert "sampling_rate" in clean["no_rate"]
    assert "soxr" in clean["no_soxr"] and "44100" in clean["no_soxr"]


def test_a_folder_of_a_newer_format_is_refused_with_the_fix(shared):
    assert "newer than this code reads" in shared["clean"]["newer"] and "git pull" in shared["clean"]["newer"]
    with pytest.raises(PredictError, match="newer than this code reads"):
        EmotionRecognizer.from_pretrained(shared["newer"], device="cpu")


def test_the_model_card_gives_the_runs_results(shared):
    for name, (variant, _, _) in FOLDERS.items():
        card = (shared["folders"][name] / "README.md").read_text()
        header = yaml.safe_load(card.split("---\n")[1])
        results = json.loads((shared["runs"] / variant / "results.json").read_text())
        folds = json.loads((shared["folders"][name] / "config.json").read_text())["folds"]
        assert header["pipeline_tag"] == "audio-classification" and header["license"] and header["datasets"]
        metrics = {m["type"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
        for kind, key in (("accuracy", "wa"), ("recall", "ua"), ("f1", "macro_f1")):
            expected = 100 * np.mean([results["folds"][fold][key] for fold in folds])
            assert metrics[kind] == pytest.approx(expected, abs=1e-9), (name, kind)
        for fold, fold_metrics in results["folds"].items():
            row = next(line for line in card.splitlines() if line.startswith(f"| {fold} |")).split("|")
            assert [float(cell) for cell in row[2:5]] == pytest.approx(
                [100 * fold_metrics[k] for k in ("wa", "ua", "macro_f1")], abs=0.005)
        assert results["selection"] in card and "@inproceedings{ghosh2023mmer" in card
    ensemble = yaml.safe_load((shared["folders"]["mmer_ensemble"] / "README.md").read_text().split("---\n")[1])
    results = json.loads((shared["runs"] / "mmer" / "results.json").read_text())
    assert ensemble["model-index"][0]["results"][0]["metrics"][1]["value"] == pytest.approx(100 * results["mean"]["ua"])


def test_the_cards_metrics_are_the_mean_over_the_folds_it_holds():
    """By hand: folds of WA 50/70, UA 40/60, macro-F1 30/50 percent."""
    from inference.model_card import metadata
    results = {"folds": {"1": {"wa": 0.5, "ua": 0.4, "macro_f1": 0.3}, "2": {"wa": 0.7, "ua": 0.6, "macro_f1": 0.5}}}
    for folds, expected in ((["1", "2"], [60.0, 50.0, 40.0]), (["2"], [70.0, 60.0, 50.0])):
        metrics = metadata(results, "mmer", "IEMOCAP", "other", folds)["model-index"][0]["results"][0]["metrics"]
        assert [m["type"] for m in metrics] == ["accuracy", "recall", "f1"]
        assert [m["value"] for m in metrics] == pytest.approx(expected)


def test_emotion_recognizer_reads_a_shared_folder_as_it_reads_the_run(shared):
    for name, flags in (("mmer_ensemble", {"ensemble": True}), ("mmer_asr", {"session": "1",
                                                                            "asr": shared["whisper"]})):
        from_folder = EmotionRecognizer.from_pretrained(shared["folders"][name], device="cpu")
        from_run = EmotionRecognizer.from_run(shared["runs"] / "mmer", device="cpu", **flags)
        for transcript in (TRANSCRIPT, None):
            a, b = from_folder.predict(shared["wav"], transcript), from_run.predict(shared["wav"], transcript)
            assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
            assert (a.transcript, a.transcript_source) == (b.transcript, b.transcript_source)
    bundled = shared["folders"]["mmer_asr"] / "asr"   # the folder's own copy of the recogniser
    assert from_folder.asr is not None and from_folder.asr.name == str(bundled.resolve())
    table = predict.main(["--model_dir", str(shared["folders"]["mmer_fold"]), shared["wav"], "--transcript",
                          TRANSCRIPT, "--device", "cpu"])
    expected, _ = predicted(shared, "mmer_fold", TRANSCRIPT)
    assert {c[5:]: table.iloc[0][c] for c in table if c.startswith("prob_")} == pytest.approx(expected, abs=1e-6)


def export_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        export.main([*map(str, argv)])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_runs_and_folds_are_named_and_nothing_is_written(shared, tmp_path, capsys):
    runs, out = shared["runs"], tmp_path / "out"
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs / "mmer", unfinished)
    (unfinished / "results.json").unlink()
    (unfinished / "2_result.json").unlink()
    error = export_error(capsys, unfinished, "--format", "hf", "--out", out)
    assert "has not finished" in error and "folds finished: 1" in error and "--resume" in error
    error = export_error(capsys, runs / "mmer", "--format", "hf", "--out", out, "--session", "7")
    assert "no fold 7" in error and "1, 2" in error
    error = export_error(capsys, shared["folders"]["cai_sota"], "--format", "hf", "--out", out)
    assert "is a shared model folder, not a run folder" in error
    onnx_like = tmp_path / "onnx"
    onnx_like.mkdir()
    (onnx_like / "manifest.json").write_text("{}")
    assert "is an ONNX export" in export_error(capsys, onnx_like, "--format", "hf", "--out", out)
    published = tmp_path / "published"
    published.mkdir()
    shutil.copy(runs / "cai_sota" / "1_model.pt", published / "1_model.pt")
    assert "not a run folder of run.py" in export_error(capsys, published, "--format", "hf", "--out", out)
    assert "would replace the run folder" in export_error(capsys, runs / "mmer", "--format", "hf", "--out",
                                                         runs / "mmer")
    error = export_error(capsys, runs / "mmer", "--format", "hf", "--out", shared["folders"]["mmer_fold"])
    assert "exists and is not empty" in error and "--overwrite" in error
    assert "--opset: not a flag of --format hf" in export_error(capsys, runs / "mmer", "--format", "hf", "--out",
                                                               out, "--opset", "18")
    ct2 = tmp_path / "whisper-ct2"   # what makes a folder CTranslate2's: its model.bin
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"")
    error = export_error(capsys, runs / "mmer", "--format", "hf", "--out", out, "--include_text_encoder", "--asr", ct2)
    assert "a CTranslate2 Whisper" in error and "the local transformers Whisper it was converted from" in error
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_push_fails_at_once_without_a_network_and_keeps_the_folder(shared, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")   # nothing listens: refused at once
    out = tmp_path / "pushed"
    began = time.monotonic()
    error = export_error(capsys, shared["runs"] / "unimodal_baseline", "--format", "hf", "--out", out,
                         "--push", "someone/mmer-test")
    assert "cannot reach https://127.0.0.1:9" in error and "hf upload someone/mmer-test" in error
    assert time.monotonic() - began < 60 and (out / "model.safetensors").is_file()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    error = export_error(capsys, shared["runs"] / "unimodal_baseline", "--format", "hf", "--out", out,
                         "--overwrite", "--push", "someone/mmer-test")
    assert "HF_HUB_OFFLINE" in error


def test_a_shared_folder_writes_its_audio_input_as_the_encoder_reads_it(shared):
    """The feature extractor in the folder is the speech encoder's: it normalises as training did."""
    from transformers import AutoFeatureExtractor
    from dataio.audio import normalize, read_audio
    extractor = AutoFeatureExtractor.from_pretrained(shared["folders"]["unimodal_baseline"])
    samples = read_audio(shared["wav"])
    np.testing.assert_allclose(extractor(samples, sampling_rate=16000)["input_values"][0], normalize(samples),
                               atol=1e-6)
    assert sf.info(shared["wav"]).samplerate == 16000


# ---------------------------------------------------------------- the pipeline's inputs
@pytest.fixture(scope="module")
def pipe(shared):
    """mmer_fold's pipeline, built in this process from the folder's model and feature extractor."""
    folder = shared["folders"]["mmer_fold"]
    return MMERAudioClassificationPipeline(model=MMERForEmotionRecognition.from_pretrained(folder),
                                           feature_extractor=AutoFeatureExtractor.from_pretrained(folder), device="cpu")


def test_the_pipeline_names_a_clip_shorter_than_the_encoders_receptive_field(shared, pipe):
    speech = json.loads((shared["folders"]["mmer_fold"] / "config.json").read_text())["speech_encoder"]
    assert (speech["conv_kernel"], speech["conv_stride"]) == BASE_CONV
    six_ms = np.zeros(96, np.float32)   # 6 ms at 16 kHz
    with pytest.raises(PipelineInputError, match=r"array: 6\.0 ms of audio, shorter than the speech encoder's "
                                                 r"receptive field \(400 samples, 25 ms\); give a longer recording"):
        pipe(six_ms, sampling_rate=16000, transcript=TRANSCRIPT)
    with pytest.raises(PipelineInputError, match="shorter than"):
        pipe(np.zeros(RECEPTIVE_FIELD - 1, np.float32), sampling_rate=16000, transcript=TRANSCRIPT)
    shortest = pipe(np.random.default_rng(0).standard_normal(RECEPTIVE_FIELD).astype(np.float32),
                    sampling_rate=16000, transcript=TRANSCRIPT)
    assert sum(scores(shortest).values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_the_pipeline_names_non_finite_audio(pipe, bad):
    samples = np.zeros((16000, 2), np.float32)
    samples[1234, 1] = bad
    with pytest.raises(PipelineInputError) as error:
        pipe(samples, sampling_rate=16000, transcript=TRANSCRIPT)
    assert "array: the audio holds NaN or infinite samples" in str(error.value)
    assert "[samples, channels]" not in str(error.value)


def test_the_pipeline_reads_a_channels_first_array_with_a_note(shared, pipe, caplog):
    """torchaudio's [2, 32000] is two channels of 2 s, not 32,000 channels of 2 samples: the
    probabilities of soundfile's [32000, 2] of the same audio, and a warning saying so."""
    left = sf.read(shared["wav"], dtype="float32")[0][:32000]
    assert len(left) == 32000
    stereo = np.stack([left, left[::-1] * 0.5], axis=1)             # [32000, 2], two different channels
    expected = scores(pipe(stereo, sampling_rate=16000, transcript=TRANSCRIPT))
    with caplog.at_level(logging.WARNING):
        got = scores(pipe(np.ascontiguousarray(stereo.T), sampling_rate=16000, transcript=TRANSCRIPT))
        by_dict = scores(pipe({"raw": stereo.T, "sampling_rate": 16000}, transcript=TRANSCRIPT))
    assert got == pytest.approx(expected, abs=1e-6) and by_dict == pytest.approx(expected, abs=1e-6)
    assert "shape (2, 32000) read as [channels, samples]" in caplog.text
    assert scores(pipe(left, sampling_rate=16000, transcript=TRANSCRIPT)) != pytest.approx(expected, abs=1e-4)


# ---------------------------------------------------------------- what a folder records
def machine_paths(shared, demo, tmp_path_factory) -> set[str]:
    """The paths of the exporting machine a folder could leak: the tmp tree holding the encoders,
    the recogniser, the corpus, the run folders and the folders, each of those, the repository, the
    working directory and the home folder (as given and resolved)."""
    paths = {tmp_path_factory.getbasetemp(), demo.root, demo.csv, demo.wav2vec2_model, demo.roberta_model,
             demo.whisper_model, shared["bundled_whisper"], shared["runs"], shared["runs"] / "mmer", REPO, Path.cwd(),
             Path.home()}
    return {str(p) for path in paths for p in (Path(path), Path(path).resolve()) if len(str(p)) > 4}


def test_no_shared_folder_records_a_path_of_the_exporting_machine(shared, demo, tmp_path_factory):
    """Every file of every folder, text (json, md, py, txt where any) and binary; local models by
    the names another machine reads, `local:<folder name>`."""
    needles = machine_paths(shared, demo, tmp_path_factory)
    files = [p for name in FOLDERS for p in sorted(shared["folders"][name].rglob("*")) if p.is_file()]
    suffixes = {p.suffix for p in files}
    assert {".json", ".md", ".py", ".safetensors"} <= suffixes, suffixes
    assert shared["folders"]["mmer_asr"] / "asr" / "model.safetensors" in files
    leaks = {f"{p.relative_to(shared['root'])}: {needle}" for p in files for content in [p.read_bytes()]
             for needle in needles if needle.encode() in content}
    assert not leaks
    config = json.loads((shared["folders"]["mmer_asr"] / "config.json").read_text())
    assert config["text_encoder"]["name"] == "local:roberta" and config["text_encoder"]["bundled"] == "text_encoder"
    assert config["model_config"]["wav2vec2"] == config["speech_encoder"]["_name_or_path"] == "local:wav2vec2"
    assert (config["asr"]["model"], config["asr"]["bundled"]) == ("local:whisper", "asr")
    assert json.loads((shared["folders"]["mmer_asr"] / "mmer_export.json").read_text())["run_folder"] == "mmer"


def test_a_local_recogniser_is_bundled_as_it_is_and_read_from_the_folder(shared):
    """The recogniser's own folder was removed once exported: the clean process's transcripts
    (test_the_pipeline_gives_predicts_probabilities_sorted), EmotionRecognizer's
    (test_emotion_recognizer_reads_a_shared_folder_as_it_reads_the_run) and predict.py
    --model_dir's came from asr/."""
    bundled, source = shared["folders"]["mmer_asr"] / "asr", Path(shared["whisper"])   # the copy's original
    assert not shared["bundled_whisper"].exists()
    assert sorted(p.name for p in bundled.iterdir()) == sorted(p.name for p in source.iterdir())
    for name in {p.name for p in source.iterdir()} - {"config.json"}:
        assert (bundled / name).read_bytes() == (source / name).read_bytes(), name
    config = json.loads((bundled / "config.json").read_text())
    assert config.pop("_name_or_path") == "local:whisper"     # the path a transformers 4 save left, by its name
    assert config == json.loads((source / "config.json").read_text())
    clean = shared["clean"]["folders"]["mmer_asr"]["missing"]
    assert clean["transcript_source"] == "asr"
    row = predict.main(["--model_dir", str(shared["folders"]["mmer_asr"]), shared["wav"], "--device", "cpu"]).iloc[0]
    assert (row["transcript"], row["transcript_source"]) == (clean["transcript"], "asr")
    probabilities = {c[5:]: row[c] for c in row.index if c.startswith("prob_")}
    assert probabilities == pytest.approx(scores(clean["scores"]), abs=1e-5)


def test_the_pipeline_fetches_the_bundled_recogniser_of_a_folder_loaded_from_the_hub(shared, monkeypatch):
    """Loaded by its Hub name, the folder is not on disk where the model says: asr/ comes through
    huggingface_hub (here a stand-in handing back the exported folder) and transcribes as the
    clean process's did."""
    import huggingface_hub
    folder, asked = shared["folders"]["mmer_asr"], []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, allow_patterns: asked.append((repo_id, allow_patterns)) or str(folder))
    model = MMERForEmotionRecognition.from_pretrained(folder)
    hub_pipe = MMERAudioClassificationPipeline(model=model, device="cpu",
                                               feature_extractor=AutoFeatureExtractor.from_pretrained(folder))
    hub_pipe(shared["wav"], transcript=TRANSCRIPT)   # the text encoder, from the folder on disk
    model.name_or_path = "someone/mmer-asr"
    got = hub_pipe(shared["wav"], return_transcript=True)
    assert asked == [("someone/mmer-asr", ["asr/*"])]
    clean = shared["clean"]["folders"]["mmer_asr"]["missing"]
    assert (got["transcript"], got["transcript_source"]) == (clean["transcript"], "asr")
    assert scores(got["scores"]) == pytest.approx(scores(clean["scores"]), abs=1e-6)


def test_a_local_text_encoder_is_bundled_or_the_export_is_refused(shared, tmp_path, capsys):
    config = json.loads((shared["folders"]["mmer_fold"] / "config.json").read_text())
    assert config["text_encoder"]["bundled"] == "text_encoder"
    assert (shared["folders"]["mmer_fold"] / "text_encoder" / "model.safetensors").is_file()
    error = export_error(capsys, shared["runs"] / "mmer", "--format", "hf", "--out", tmp_path / "refused")
    assert "local folder" in error and "pass --include_text_encoder" in error
    assert list(tmp_path.iterdir()) == []


def test_the_model_card_names_the_corpus_recogniser_by_its_folder_name(tmp_path):
    whisper = tmp_path / "whisper-tiny-en"
    whisper.mkdir()
    results = {"folds": {}, "transcripts": {"text_features": "transcript",
                                            "asr": {"model": str(whisper), "wer": 0.1}}}
    assert shared_results(results)["transcripts"]["asr"] == {"model": "local:whisper-tiny-en", "wer": 0.1}
    hub = {"folds": {}, "transcripts": {"asr": {"model": "openai/whisper-small"}}}
    assert shared_results(hub) == hub
