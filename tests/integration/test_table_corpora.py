"""Any corpus without code: a table of clips (data=manifest), file names (data=pattern), folders (data=folder)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.utils import instantiate

from datamodules.clips import Clip, CorpusLayoutError
from datamodules.corpora import manifest, pattern
from datamodules.decode import BadInputError
from datamodules.faces import WholeFrameFaces
from datamodules.preprocess import cut_source, prepare_corpus
from datamodules.preprocess.pipeline import decode, preprocess_clip
from tests.helpers.audio_trees import voice, write_wav
from tests.helpers.configs import TINY_MODELS, audio_cfg, compose_train
from tests.helpers.face_trees import face_image, write_frame
from tests.helpers.paths import REPO, shared_path

URDU_MAP = {"Angry": "anger", "Happy": "happiness", "Neutral": "neutral", "Sad": "sadness"}
URDU_PATTERN = "{label}/{subject}_F{take}_{code}.wav"
FOUR = ["anger", "happiness", "neutral", "sadness"]
YOUR_CORPUS = REPO / "docs" / "your_corpus.md"


def table(folder: Path, text: str, name: str = "clips.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def wavs(tmp_path) -> Path:
    """Three 1.4-1.7 s wavs: a.wav, b.wav, c.wav."""
    for name, emotion in (("a", "anger"), ("b", "happiness"), ("c", "sadness")):
        write_wav(tmp_path / "audio" / f"{name}.wav", voice(emotion, 1, 0))
    return tmp_path


def test_a_good_table_indexes_with_its_map_classes_extra_columns_and_default_ids(wavs):
    table(
        wavs,
        "path,subject,label,session,start_s,end_s\n"
        "audio/a.wav,spk1,ANG,s1,,\n"
        "audio/b.wav,spk1,exc,s1,0.2,1.0\n"
        f"{wavs / 'audio' / 'c.wav'},spk2,SAD,s2,,\n"
        "audio/a.wav,spk2,HAP,s2,0,0.5\n",
    )
    result = manifest.index(
        wavs,
        classes=["anger", "happiness"],
        label_map={"ANG": "anger", "HAP": "happiness", "exc": "happiness", "SAD": "sadness"},
    )
    assert [c.clip_id for c in result.clips] == ["audio_a", "audio_b_0.2s-1s", "audio_a_0s-0.5s"]
    assert result.clips[1].cut == (0.2, 1.0) and result.clips[0].cut is None
    assert result.clips[0].extra == {"session": "s1", "corpus_label": "ANG"}
    assert result.excluded == [(str(wavs / "audio" / "c.wav"), "class sadness not in classes")]
    assert result.skipped == []


def test_tsv_and_a_sniffed_delimiter(wavs):
    table(wavs, "path\tsubject\tlabel\naudio/a.wav\tspk1\tanger\n", "clips.tsv")
    table(wavs, "path;subject;label\naudio/b.wav;spk1;anger\n", "clips.txt")
    assert [c.clip_id for c in manifest.index(wavs, manifest="clips.tsv").clips] == ["audio_a"]
    assert [c.clip_id for c in manifest.index(wavs, manifest="clips.txt").clips] == ["audio_b"]


BAD_ROWS = {
    "empty clip_id": ("audio/b.wav,spk1,anger,", r"row 3: empty clip_id"),
    "duplicated clip_id": ("audio/b.wav,spk1,anger,one", r"row 3: clip_id 'one' is already taken by row 2"),
    "missing path": ("audio/zz.wav,spk1,anger,two", r"row 3: path 'audio/zz.wav' does not exist"),
    "end before start": ("audio/b.wav,spk1,anger,two,1.0,0.5", r"row 3: end_s=0.5 is not after start_s=1.0"),
    "not a number": ("audio/b.wav,spk1,anger,two,x,", r"row 3: start_s='x' is not a number"),
    "unknown label": ("audio/b.wav,spk1,ANGRY,two", r"row 3: unknown label 'ANGRY': there is no label_map"),
    "empty subject": ("audio/b.wav,,anger,two", r"row 3: empty subject \(path 'audio/b.wav'\)"),
    "unsafe clip_id": ("audio/b.wav,spk1,anger,a/b", r"row 3: clip_id 'a/b' is not filesystem-safe"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_each_bad_row_is_named_by_its_row_and_value_skipped_or_raised(wavs, case):
    row, message = BAD_ROWS[case]
    table(
        wavs,
        f"path,subject,label,clip_id,start_s,end_s\naudio/a.wav,spk1,anger,one\n{row}\naudio/c.wav,spk2,fear,three\n",
    )
    result = manifest.index(wavs)
    assert [c.clip_id for c in result.clips] == ["one", "three"]
    ((path, reason),) = result.skipped
    assert path == str(wavs / "clips.csv")
    assert re.search(message, reason), reason
    with pytest.raises(CorpusLayoutError, match=rf"clips.csv {message}"):
        manifest.index(wavs, on_error="raise")


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_a_missing_column_stops_both_modes(wavs, on_error):
    table(wavs, "path,label\naudio/a.wav,anger\n")
    with pytest.raises(CorpusLayoutError, match=r"lacks the column\(s\) subject \(its header: \['path', 'label'\]\)"):
        manifest.index(wavs, on_error=on_error)
    with pytest.raises(CorpusLayoutError, match="nothing.csv does not exist"):
        manifest.index(wavs, manifest="nothing.csv", on_error=on_error)


def test_a_cut_is_applied_when_decoded_and_past_the_end_is_a_reason(wavs):
    path = wavs / "audio" / "a.wav"
    whole = decode(Clip("a", path, "s", "anger"), audio_cfg())
    cut = decode(Clip("a", path, "s", "anger", start_s=0.25, end_s=1.0), audio_cfg())
    assert cut.duration_s == pytest.approx(0.75) and cut.audio.size == 12000
    np.testing.assert_array_equal(cut.audio, whole.audio[4000:16000])
    with pytest.raises(BadInputError, match=r"end_s=9 is past the end of the recording \(1\.\d+ s\)"):
        decode(Clip("a", path, "s", "anger", start_s=0.5, end_s=9.0), audio_cfg())


def test_a_manifest_corpus_prepares_its_cuts_and_drops_a_cut_past_the_end(wavs, tmp_path):
    table(
        wavs,
        "path,subject,label,start_s,end_s\n"
        "audio/a.wav,spk1,anger,0.1,1.2\n"
        "audio/b.wav,spk1,happiness,,\n"
        "audio/c.wav,spk2,sadness,0.2,30\n",
    )
    result = manifest.index(wavs)
    cfg = audio_cfg()
    prepared = prepare_corpus(
        result.clips,
        cfg,
        tmp_path / "cache",
        corpus="manifest",
        source=cut_source("x", result.clips),
        workers=1,
        indexed=result,
        progress=False,
    )
    assert prepared.metas["audio_a_0.1s-1.2s"]["duration_s"] == pytest.approx(1.1)
    (dropped,) = prepared.report["dropped"].values()
    assert dropped["step"] == "decode" and "end_s=30 is past the end of the recording" in dropped["reason"]
    other = [Clip(c.clip_id, c.path, c.subject, c.label, start_s=0.0 if c.cut else None) for c in result.clips]
    assert cut_source("x", result.clips) != cut_source("x", other) != "x"
    assert cut_source("x", [Clip("a", wavs, "s", "anger")]) == "x"  # corpora without cuts keep their keys


def test_a_folder_of_frames_and_a_single_image_are_clips_without_audio(tmp_path):
    for frame in range(4):
        write_frame(tmp_path / "seq" / f"f{frame + 1}.png", face_image("anger", 1, frame))
    write_frame(tmp_path / "seq" / "f10.png", face_image("anger", 1, 9))
    write_frame(tmp_path / "one.png", face_image("fear", 2, 0))
    table(tmp_path, "path,subject,label\nseq,s1,anger\none.png,s2,fear\n")
    sequence, image = sorted(manifest.index(tmp_path).clips, key=lambda c: c.subject)
    assert [p.name for p in sequence.extra["frames"]] == ["f1.png", "f2.png", "f3.png", "f4.png", "f10.png"]
    assert image.extra["frames"] == (tmp_path / "one.png",)
    cfg = {**audio_cfg(), "audio": False, "video": True}
    cfg["faces"] = {**cfg["faces"], "detect": False, "size": 32}
    for clip, frames in ((sequence, 5), (image, 1)):
        assert decode(clip, cfg).frames.shape[:3] == (frames, 48, 48)
        record = preprocess_clip(clip, cfg, WholeFrameFaces())
        assert record["meta"]["n_segments"] >= 1 and record["face_frames"].shape[-1] == 32


def make_files(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_the_urdu_crema_d_and_jaffe_patterns(tmp_path):
    make_files(tmp_path / "urdu", ["Angry/SM1_F10_A010.wav", "Sad/SF2_F3_S001.wav", "Sad/notes.txt", "Sad/bad.wav"])
    urdu = pattern.index(tmp_path / "urdu", pattern=URDU_PATTERN, label_map=URDU_MAP, classes=FOUR)
    assert [(c.subject, c.label, c.extra["take"], c.extra["code"]) for c in urdu.clips] == [
        ("SF2", "sadness", "3", "S001"),
        ("SM1", "anger", "10", "A010"),
    ]
    assert urdu.other_files == 1
    assert urdu.skipped == [
        (str(tmp_path / "urdu/Sad/bad.wav"), f"'Sad/bad.wav' does not match the pattern {URDU_PATTERN!r}")
    ]
    with pytest.raises(CorpusLayoutError, match="bad.wav' does not match the pattern"):
        pattern.index(tmp_path / "urdu", pattern=URDU_PATTERN, label_map=URDU_MAP, classes=FOUR, on_error="raise")

    make_files(tmp_path / "crema", ["1001_DFA_ANG_XX.flv", "1002_IEO_HAP_HI.flv", "1002_IEO_NEU_XX.flv"])
    crema_map = {
        "ANG": "anger",
        "DIS": "disgust",
        "FEA": "fear",
        "HAP": "happiness",
        "NEU": "neutral",
        "SAD": "sadness",
    }
    crema = pattern.index(tmp_path / "crema", pattern="{subject}_{sentence}_{label}_{level}.flv", label_map=crema_map)
    assert [(c.subject, c.label, c.extra["level"]) for c in crema.clips] == [
        ("1001", "anger", "XX"),
        ("1002", "happiness", "HI"),
    ]
    assert crema.excluded == [(str(tmp_path / "crema/1002_IEO_NEU_XX.flv"), "class neutral not in classes")]

    for name, label in (("KA.AN1.39.tiff", "anger"), ("KM.SU2.16.tiff", "surprise")):
        (tmp_path / "jaffe").mkdir(exist_ok=True)
        from PIL import Image

        Image.fromarray(face_image(label, 1, 0)[0].numpy()).save(tmp_path / "jaffe" / name)
    jaffe_map = {
        "AN": "anger",
        "DI": "disgust",
        "FE": "fear",
        "HA": "happiness",
        "SA": "sadness",
        "SU": "surprise",
        "NE": "neutral",
    }
    jaffe = pattern.index(tmp_path / "jaffe", pattern="{subject}.{label:l}{n:d}.{image:d}.tiff", label_map=jaffe_map)
    assert [(c.clip_id, c.subject, c.label, c.extra["n"], c.extra["image"]) for c in jaffe.clips] == [
        ("KA.AN1.39", "KA", "anger", 1, 39),
        ("KM.SU2.16", "KM", "surprise", 2, 16),
    ]
    assert decode(jaffe.clips[0], {**audio_cfg(), "audio": False, "video": True}).frames.shape == (1, 48, 48, 3)


def doc_row(corpus: str) -> str:
    """The row of docs/your_corpus.md's table that brings ``corpus``."""
    (row,) = [line for line in YOUR_CORPUS.read_text().splitlines() if line.startswith(f"| {corpus} ")]
    return row


def doc_setting(row: str, key: str) -> str:
    """The value of ``'<key>=<value>'`` on a documented command line, as Hydra receives it (outer quotes gone)."""
    return re.search(rf"'{re.escape(key)}=(.+?)'(?: |`)", row).group(1).strip('"')


def test_the_documented_savee_and_nemo_lines(tmp_path):
    savee = doc_row("SAVEE")
    make_files(tmp_path / "savee", ["DC/a01.wav", "DC/sa15.wav", "JK/su03.wav", "JK/n30.wav", "JK/x01.wav"])
    result = pattern.index(
        tmp_path / "savee",
        pattern=doc_setting(savee, "data.indexer.pattern"),
        label_map=yaml.safe_load(doc_setting(savee, "data.indexer.label_map")),
        classes=[*FOUR, "surprise"],
    )
    assert [(c.subject, c.label, c.extra["n"]) for c in result.clips] == [
        ("DC", "anger", 1),
        ("DC", "sadness", 15),
        ("JK", "neutral", 30),
        ("JK", "surprise", 3),
    ]
    assert "unknown label 'x'" in result.skipped[0][1]

    nemo = doc_row("nEMO")
    make_files(tmp_path / "nemo", ["data/SB0_anger_0.wav", "data/SB0_surprised_12.wav", "data/KL1_sadness_3.wav"])
    result = pattern.index(
        tmp_path / "nemo",
        pattern=doc_setting(nemo, "data.indexer.pattern"),
        label_map=yaml.safe_load(doc_setting(nemo, "data.indexer.label_map")),
        classes=["anger", "sadness", "surprise"],
    )
    assert [(c.subject, c.label) for c in result.clips] == [("KL1", "sadness"), ("SB0", "anger"), ("SB0", "surprise")]


def test_the_documented_iemocap_script_writes_a_table_that_indexes(tmp_path):
    """The script of docs/your_corpus.md, run on an IEMOCAP look-alike tree, and the documented label map."""
    root = tmp_path / "IEMOCAP_full_release"
    lines = {
        "Ses01F_impro01_F000": ("neu", "6.2901 - 8.2357"),
        "Ses01F_impro01_M001": ("ang", "10.0100 - 11.3925"),
        "Ses01F_impro01_M002": ("exc", "14.8872 - 18.0175"),
        "Ses01F_impro01_F003": ("fru", "19.2900 - 20.7875"),
    }
    evaluation = root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    evaluation.parent.mkdir(parents=True)
    evaluation.write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        + "".join(f"[{times}]\t{name}\t{label}\t[2.5000, 2.5000, 2.5000]\n" for name, (label, times) in lines.items())
    )
    make_files(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01", [f"{name}.wav" for name in lines])
    doc = YOUR_CORPUS.read_text()
    script = doc[doc.index("This script") :].split("```python\n", 1)[1].split("```", 1)[0]
    exec(script.replace('"/data/IEMOCAP_full_release"', repr(str(root))), {})
    row = doc_row("IEMOCAP")
    result = manifest.index(
        root,
        manifest="iemocap.csv",
        label_map=yaml.safe_load(doc_setting(row, "data.indexer.label_map")),
        classes=yaml.safe_load(doc_setting(row, "data.classes")),
    )
    assert [(c.subject, c.label, c.extra["dialog_start_s"]) for c in result.clips] == [
        ("Ses01F", "neutral", "6.2901"),
        ("Ses01M", "anger", "10.0100"),
        ("Ses01M", "happiness", "14.8872"),
    ]
    assert not result.skipped  # frustration is left out by the map (null), not an error


def test_a_pattern_without_subject_or_label_and_an_unknown_label(tmp_path):
    make_files(tmp_path, ["s1/anger/a.wav", "s1/ANGRY/b.wav"])
    with pytest.raises(ValueError, match=r"lacks the field\(s\) \{subject\}"):
        pattern.index(tmp_path, pattern="{label}/{_}")
    result = pattern.index(tmp_path)
    assert [c.clip_id for c in result.clips] == ["s1_anger_a"]
    assert "unknown label 'ANGRY'" in result.skipped[0][1]


def test_data_folder_and_data_pattern_from_the_real_configs(tmp_path):
    make_files(tmp_path / "c", ["spk1/anger/x.wav", "spk2/sadness/y.flac", "spk2/deeper/sadness/z.wav"])
    cfg = compose_train(["data=folder", f"data.root={tmp_path / 'c'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    result = instantiate(cfg.data).index()
    assert [(c.subject, c.label) for c in result.clips] == [("spk1", "anger"), ("spk2", "sadness")]
    assert len(result.skipped) == 1
    cfg = compose_train(
        ["data=pattern", f"data.root={tmp_path / 'c'}", "data.indexer.pattern='{subject}/{label}/{name}.wav'"]
    )
    assert [c.extra["name"] for c in instantiate(cfg.data).index().clips] == ["x"]


def test_the_urdu_corpus_through_data_pattern():
    root = shared_path("urdu")
    label_map = "{Angry: anger, Happy: happiness, Neutral: neutral, Sad: sadness}"
    cfg = compose_train(
        [
            "data=pattern",
            f"data.root={root}",
            f"data.indexer.pattern='{URDU_PATTERN}'",
            f"data.indexer.label_map={label_map}",
            f"data.classes=[{','.join(FOUR)}]",
        ]
    )
    result = instantiate(cfg.data).index()
    assert len(result.clips) == 400 and result.skipped == [] and result.excluded == []
    assert Counter(c.label for c in result.clips) == dict.fromkeys(FOUR, 100)
    assert len({c.subject for c in result.clips}) == 29
    preprocess = dict(instantiate(cfg.data.preprocess))
    for clip in result.clips[::100]:
        decoded = decode(clip, preprocess)
        assert decoded.sample_rate == 16000 and decoded.audio.size == pytest.approx(decoded.duration_s * 16000)
        record = preprocess_clip(clip, preprocess, None)
        assert record["meta"]["n_segments"] >= 1 and record["meta"]["subject"] == clip.subject


@pytest.mark.slow
def test_a_tiny_pattern_corpus_trains_and_predicts_end_to_end(tmp_path, capsys):
    """A pattern corpus trains (one epoch, per-corpus normalisation, class-balanced batches) and its run predicts."""
    from hydra import compose, initialize_config_dir

    from runner.loop import run
    from runner.prediction import predict

    root = tmp_path / "corpus"
    for speaker in range(1, 4):
        for label, emotion in (("Angry", "anger"), ("Sad", "sadness")):
            for take in range(2 if label == "Angry" else 1):
                write_wav(
                    root / label / f"SM{speaker}_F{take}_{label[0]}{take:03d}.wav",
                    voice(emotion, speaker, take, (2.2, 2.5)),
                )
    cfg = compose_train(
        [
            "experiment=ravdess_audio",
            "data=pattern",
            f"data.root={root}",
            f"data.indexer.pattern='{URDU_PATTERN}'",
            "data.indexer.label_map={Angry: anger, Sad: sadness}",
            "data.classes=[anger,sadness]",
            "data.audio_norm=corpus",
            "data.balance=classes",
            "data.preprocess_workers=1",
            "data.num_workers=0",
            "cv=loso",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.output_dir={tmp_path / 'outputs'}",
            "callbacks.progress_bar=null",
            "logger=none",
            "stage=audio",
            "fold=0",
            "model.audio.trainer.max_epochs=1",
            *TINY_MODELS,
        ]
    )
    run(cfg)
    (metrics,) = (tmp_path / "outputs" / "pattern").rglob("metrics.json")
    wav = root / "Sad" / "SM1_F0_S000.wav"
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        predict_cfg = compose(
            "predict", overrides=[f"input={wav}", f"run={metrics.parents[2]}", f"out={tmp_path / 'predicted'}"]
        )
    report = predict(predict_cfg)
    assert [entry["label"] in ("anger", "sadness") for entry in report["files"]] == [True]
    assert "corpus-normalised audio model (data.audio_norm=corpus)" in capsys.readouterr().out
