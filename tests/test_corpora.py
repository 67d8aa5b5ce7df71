"""Corpus indexers on look-alike trees of empty files (RML, eNTERFACE'05, RAVDESS), of generated wav files
(EmoDB), and on real RAVDESS."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from audio_trees import SAMPLE_RATE, write_wav

from datamodules.clips import PAPER_EMOTIONS, CorpusLayoutError
from datamodules.corpora import emodb, enterface, get_indexer, ravdess, rml
from datamodules.decode import decode_clip

RML_CODES = ("an", "di", "fe", "ha", "sa", "su")
SAFE_ID = re.compile(r"[A-Za-z0-9_.-]+")


def touch(root: Path, *relative_paths: str) -> None:
    for relative in relative_paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def assert_well_formed(result) -> None:
    """Ids unique and safe, labels known, order (subject, label, clip_id), every path a file."""
    ids = [clip.clip_id for clip in result.clips]
    assert len(ids) == len(set(ids))
    assert all(SAFE_ID.fullmatch(clip_id) for clip_id in ids)
    assert all(clip.path.is_file() for clip in result.clips)
    keys = [(clip.subject, clip.label) for clip in result.clips]
    assert keys == sorted(keys)


# --- RML -------------------------------------------------------------------------------------------


def make_rml_720(root: Path) -> None:
    """8 speakers x 6 emotions x 15: s1-s5 flat under rml-1, s6-s8 under rml-2 with language folders."""
    for speaker in range(1, 6):
        touch(root, *(f"rml-1/s{speaker}/{code}{k}.avi" for code in RML_CODES for k in range(1, 16)))
    languages = {
        6: {"English": range(1, 9), "Mandarin": range(1, 8)},
        7: {"Urdu": range(1, 16)},
        8: {"Italian": range(1, 9), "Persian": range(1, 8)},
    }
    for speaker, folders in languages.items():
        for language, takes in folders.items():
            touch(root, *(f"rml-2/s{speaker}/{language}/{code}{k}.avi" for code in RML_CODES for k in takes))
    touch(root, "rml-1/readme.txt", "rml-2/s7/Urdu/notes.doc", "rml-1/s2/._an1.avi")


def test_rml_full_lookalike_gives_720_clips(tmp_path):
    make_rml_720(tmp_path)
    # Capitalised names occur in copies of the corpus.
    (tmp_path / "rml-1/s3/sa2.avi").rename(tmp_path / "rml-1/s3/SA2.AVI")
    result = rml.index(tmp_path)
    assert len(result.clips) == 720 and result.skipped == []
    assert_well_formed(result)
    assert Counter(clip.subject for clip in result.clips) == {f"s0{n}": 90 for n in range(1, 9)}
    assert Counter(clip.label for clip in result.clips) == {label: 120 for label in PAPER_EMOTIONS}
    languages = {clip.subject: set() for clip in result.clips}
    for clip in result.clips:
        languages[clip.subject].add(clip.extra["language"])
    assert languages["s01"] == {None}
    assert languages["s06"] == {"English", "Mandarin"} and languages["s07"] == {"Urdu"}
    ids = {clip.clip_id for clip in result.clips}
    assert {"s06_english_an01", "s06_mandarin_an01", "s03_sa02", "s05_su15"} <= ids


def test_rml_unparseable_video_names_raise_with_paths_and_pattern(tmp_path):
    touch(tmp_path, "s1/an1.avi", "s1/di2.avi", "s2/anger1.avi", "s2/ha.avi", "loose/fe1.avi", "s2/readme.txt")
    with pytest.raises(CorpusLayoutError) as error:
        rml.index(tmp_path, on_error="raise")
    message = str(error.value)
    assert "3 file(s)" in message
    for bad in ("s2/anger1.avi", "s2/ha.avi", "loose/fe1.avi"):
        assert str(tmp_path / bad) in message
    assert "<emotion><k>" in message and "on_error='skip'" in message
    assert "no speaker folder s<N>" in message and "readme" not in message


def test_rml_skips_and_lists_the_bad_files_with_reasons_by_default(tmp_path):
    touch(tmp_path, "s1/an1.avi", "s1/di2.avi", "s2/anger1.avi", "loose/fe1.avi")
    result = rml.index(tmp_path)
    assert [clip.clip_id for clip in result.clips] == ["s01_an01", "s01_di02"]
    skipped = dict(result.skipped)
    assert set(skipped) == {str(tmp_path / "loose/fe1.avi"), str(tmp_path / "s2/anger1.avi")}
    assert "anger1.avi" in skipped[str(tmp_path / "s2/anger1.avi")]


def test_rml_error_lists_ten_paths_and_counts_the_rest(tmp_path):
    touch(tmp_path, "s1/an1.avi", *(f"s1/bad{k}.avi" for k in range(12)))
    with pytest.raises(CorpusLayoutError, match=r"12 file\(s\)") as error:
        rml.index(tmp_path, on_error="raise")
    assert str(error.value).count(str(tmp_path / "s1" / "bad")) == 10 and "and 2 more" in str(error.value)


def test_rml_duplicate_clip_ids_raise_or_keep_the_first(tmp_path):
    touch(tmp_path, "s1/an1.avi", "s1/an01.avi", "s1/ha1.avi")
    with pytest.raises(CorpusLayoutError, match="already taken"):
        rml.index(tmp_path, on_error="raise")
    result = rml.index(tmp_path)
    assert [clip.clip_id for clip in result.clips] == ["s01_an01", "s01_ha01"]
    assert len(result.skipped) == 1


def test_rml_extensions_option_and_root_named_after_the_speaker(tmp_path):
    touch(tmp_path, "s4/an1.mp4", "s4/an2.avi")
    assert [clip.path.name for clip in rml.index(tmp_path).clips] == ["an2.avi"]
    assert [clip.path.name for clip in rml.index(tmp_path, extensions=("mp4",)).clips] == ["an1.mp4"]
    assert [clip.subject for clip in rml.index(tmp_path / "s4", extensions=(".mp4", ".avi")).clips] == ["s04"] * 2


def test_missing_empty_and_video_free_roots_name_the_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        rml.index(tmp_path / "nowhere")
    with pytest.raises(CorpusLayoutError, match=re.escape(str(tmp_path))):
        rml.index(tmp_path)
    touch(tmp_path, "s1/readme.txt")
    with pytest.raises(CorpusLayoutError, match="no RML clips"):
        rml.index(tmp_path)
    with pytest.raises(CorpusLayoutError, match="no eNTERFACE'05 clips"):
        enterface.index(tmp_path)
    with pytest.raises(ValueError, match="on_error"):
        rml.index(tmp_path, on_error="ignore")


def test_links_to_files_and_folders_are_followed_once_and_broken_links_skipped(tmp_path):
    root, elsewhere = tmp_path / "rml", tmp_path / "elsewhere"
    touch(root, "s1/an1.avi", "s1/notes.txt")
    touch(elsewhere, "s2/ha1.avi", "takes/sa3.avi")
    (root / "s2").symlink_to(elsewhere / "s2", target_is_directory=True)
    (root / "s1" / "sa3.avi").symlink_to(elsewhere / "takes" / "sa3.avi")
    (root / "s1" / "loop").symlink_to(root, target_is_directory=True)  # a cycle back to the root
    (root / "s1" / "fe2.avi").symlink_to(elsewhere / "gone.avi")
    result = rml.index(root)
    assert [clip.clip_id for clip in result.clips] == ["s01_an01", "s01_sa03", "s02_ha01"]
    broken = f"broken symbolic link (its target {elsewhere / 'gone.avi'} does not exist)"
    assert result.skipped == [(str(root / "s1" / "fe2.avi"), broken)]
    assert result.other_files == 1 and result.files_found == 5
    with pytest.raises(CorpusLayoutError, match="broken symbolic link"):
        rml.index(root, on_error="raise")


def test_get_indexer_names_the_known_corpora():
    assert get_indexer("ravdess") is ravdess.index
    with pytest.raises(ValueError, match="rml, enterface, ravdess, demo"):
        get_indexer("iemocap")


# --- eNTERFACE'05 ----------------------------------------------------------------------------------

EMOTION_FOLDERS = dict(zip(RML_CODES, PAPER_EMOTIONS))


def make_enterface(root: Path) -> None:
    """Subjects 1-8 without 6, under a wrapper folder, with the distribution's kinds of irregularity."""
    base = "enterface database"
    for subject in (1, 2, 3, 4, 5, 7, 8):
        for code, emotion in EMOTION_FOLDERS.items():
            if subject == 4 and emotion == "fear":
                continue  # a subject lacking an emotion
            for k in range(1, 6):
                name = f"s_{subject}_{code}_{k}.avi" if subject == 3 else f"s{subject}_{code}_{k}.avi"
                folder = f"{base}/subject {subject}/{emotion}/sentence {k}"
                if subject == 7:
                    folder = f"{base}/Subject 7/{emotion.capitalize()}/Sentence {k}"
                if subject == 5 and emotion == "happiness":
                    folder = f"{base}/subject 5/happiness"  # no sentence level
                if subject == 2 and emotion == "sadness":
                    folder += "/video"  # an extra level
                if subject == 1 and code == "su" and k == 5:
                    folder = f"{base}/subject 1/fear/sentence 5"  # misplaced: folder disagrees with file
                touch(root, f"{folder}/{name}")
    touch(root, f"{base}/readme.txt", f"{base}/subject 2/Thumbs.db")


def test_enterface_irregular_tree_indexes_every_clip_by_file_name(tmp_path, caplog):
    make_enterface(tmp_path)
    with caplog.at_level(logging.WARNING, logger="datamodules.corpora.enterface"):
        result = enterface.index(tmp_path)
    assert len(result.clips) == 7 * 30 - 5 and result.skipped == []
    assert_well_formed(result)
    by_id = {clip.clip_id: clip for clip in result.clips}
    assert sorted({clip.subject for clip in result.clips}) == [
        "subject_01",
        "subject_02",
        "subject_03",
        "subject_04",
        "subject_05",
        "subject_07",
        "subject_08",
    ]
    assert by_id["subject_03_an_1"].label == "anger"
    assert by_id["subject_07_ha_3"].extra == {"sentence": 3, "emotion_code": "ha"}
    assert by_id["subject_05_ha_2"].path.parent.name == "happiness"
    misplaced = by_id["subject_01_su_5"]
    assert misplaced.label == "surprise" and misplaced.path.parent.parent.name == "fear"
    disagreement = [note for note in result.notes if "s1_su_5.avi" in note]
    assert len(disagreement) == 1 and "'fear' says fear, file says surprise" in disagreement[0]
    assert any("s1_su_5.avi" in record.getMessage() for record in caplog.records)
    assert "subject_04 has no clips of fear" in result.notes
    assert "no clips of subject number(s) 6" in result.notes


def test_enterface_unparseable_names_raise_or_skip(tmp_path):
    touch(
        tmp_path,
        "subject 1/anger/sentence 1/s1_an_1.avi",
        "subject 1/anger/sentence 2/s1_an_2 copy.avi",
        "subject 1/anger/sentence 3/s1_xx_3.avi",
    )
    with pytest.raises(CorpusLayoutError) as error:
        enterface.index(tmp_path, on_error="raise")
    assert "2 file(s)" in str(error.value) and "s<N>_<emo>_<k>" in str(error.value)
    assert str(tmp_path / "subject 1/anger/sentence 2/s1_an_2 copy.avi") in str(error.value)
    result = enterface.index(tmp_path)
    assert [clip.clip_id for clip in result.clips] == ["subject_01_an_1"]
    assert sorted(Path(path).name for path, _ in result.skipped) == ["s1_an_2 copy.avi", "s1_xx_3.avi"]


# --- RAVDESS ---------------------------------------------------------------------------------------


def ravdess_names(modality: str, channel: str, actor: int, emotions=range(1, 9)) -> list[str]:
    """Every RAVDESS file name of one actor, modality and channel (neutral has no strong intensity)."""
    return [
        f"{modality}-{channel}-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}"
        for emotion in emotions
        for intensity in ((1,) if emotion == 1 else (1, 2))
        for statement in (1, 2)
        for repetition in (1, 2)
    ]


def make_ravdess(root: Path, actors=(1, 2)) -> None:
    """Per actor: 60 speech AV mp4, 60 video-only mp4, 60 audio-only wav, 44 song AV mp4."""
    for actor in actors:
        folder = f"Actor_{actor:02d}"
        touch(root, *(f"{folder}/{name}.mp4" for name in ravdess_names("01", "01", actor)))
        touch(root, *(f"{folder}/{name}.mp4" for name in ravdess_names("02", "01", actor)))
        touch(root, *(f"{folder}/{name}.wav" for name in ravdess_names("03", "01", actor)))
        touch(root, *(f"{folder}/{name}.mp4" for name in ravdess_names("01", "02", actor, (1, 2, 3, 4, 5, 6))))


@pytest.mark.shared
def test_ravdess_shared_speech_gives_960_clips(ravdess_speech_root):
    result = ravdess.index(ravdess_speech_root, modality="audio")
    assert len(result.clips) == 960 and result.skipped == []
    assert_well_formed(result)
    per_subject_label = Counter((clip.subject, clip.label) for clip in result.clips)
    assert len({subject for subject, _ in per_subject_label}) == 20
    assert set(per_subject_label.values()) == {8}
    assert Counter(clip.label for clip in result.clips) == {label: 160 for label in PAPER_EMOTIONS}
    assert Counter(rule for _, rule in result.excluded) == {
        "class neutral not in classes": 80,
        "class calm not in classes": 160,
    }
    assert result.files_found == 1200 and result.other_files == 0
    with_neutral = ravdess.index(ravdess_speech_root, modality="audio", classes=("neutral", *PAPER_EMOTIONS))
    assert len(with_neutral.clips) == 1040


@pytest.mark.shared
def test_ravdess_shared_av_clip(ravdess_av_clip):
    (clip,) = ravdess.index(ravdess_av_clip.parent).clips
    assert clip.subject == "actor_01" and clip.label == "disgust"
    assert clip.extra["intensity"] == "strong" and clip.extra["statement"] == "Dogs are sitting by the door"


def test_ravdess_modality_channel_and_classes_select_files(tmp_path):
    make_ravdess(tmp_path)
    av_clips = ravdess.index(tmp_path).clips
    assert len(av_clips) == 2 * 48
    assert {(clip.path.suffix, clip.extra["modality"], clip.extra["vocal_channel"]) for clip in av_clips} == {
        (".mp4", "audio_video", "speech")
    }
    assert_well_formed(ravdess.index(tmp_path))
    audio = ravdess.index(tmp_path, modality="audio")
    assert len(audio.clips) == 96 and {clip.path.suffix for clip in audio.clips} == {".wav"}
    assert Counter(rule for _, rule in audio.excluded) == {
        "not audio (modality)": 2 * (60 + 60 + 44),
        "class calm not in classes": 16,
        "class neutral not in classes": 8,
    }
    assert audio.files_found == 2 * 224
    song = ravdess.index(tmp_path, vocal_channel="song", classes=("neutral", "calm", "happiness"))
    assert Counter(clip.label for clip in song.clips) == {"neutral": 8, "calm": 16, "happiness": 16}
    clip = ravdess.index(tmp_path, classes=("anger",)).clips[0]
    assert clip.clip_id == "01-01-05-01-01-01-01" and clip.subject == "actor_01"
    assert clip.extra == {
        "modality": "audio_video",
        "vocal_channel": "speech",
        "emotion_code": "05",
        "intensity": "normal",
        "statement": "Kids are talking by the door",
        "repetition": 1,
    }


def test_ravdess_actor_folder_disagreement_and_bad_names(tmp_path):
    make_ravdess(tmp_path, actors=(1,))
    touch(tmp_path, "Actor_01/01-01-05-01-01-01-02.mp4", "Actor_01/01-01-09-01-01-01-01.mp4", "Actor_01/clip.mp4")
    with pytest.raises(CorpusLayoutError) as error:
        ravdess.index(tmp_path, on_error="raise")
    message = str(error.value)
    assert "3 file(s)" in message and "MM-VV-EE-II-SS-RR-AA" in message
    assert "'Actor_01' disagrees with actor 02" in message and "emotion code 09" in message
    result = ravdess.index(tmp_path)
    assert len(result.clips) == 48 and len(result.skipped) == 3


def test_ravdess_options_are_checked(tmp_path):
    make_ravdess(tmp_path, actors=(1,))
    with pytest.raises(ValueError, match="contempt"):
        ravdess.index(tmp_path, classes=("anger", "contempt"))
    with pytest.raises(ValueError, match="modality"):
        ravdess.index(tmp_path, modality="video")
    with pytest.raises(ValueError, match="vocal_channel"):
        ravdess.index(tmp_path, vocal_channel="both")
    with pytest.raises(CorpusLayoutError, match="left out 60 file"):
        ravdess.index(tmp_path / "Actor_01", modality="audio", classes=("calm",), vocal_channel="song")


# --- EmoDB -----------------------------------------------------------------------------------------


def make_emodb_with_every_class(root: Path) -> None:
    """Real 0.2 s wav files: speakers 03 and 16, every emotion letter, two sentences, plus non-audio files."""
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(3200) / SAMPLE_RATE)
    for speaker in ("03", "16"):
        for letter in emodb.EMOTIONS:
            for text in ("a01", "b10"):
                write_wav(root / "wav" / f"{speaker}{text}{letter}a.wav", tone)
    touch(root, "lablaut/03a01Fa.lab", "silb/03a01Fa.sil", "wav/.03a01Wa.wav")


def test_emodb_generated_tree_maps_letters_to_class_names(tmp_path):
    make_emodb_with_every_class(tmp_path)
    write_wav(tmp_path / "wav" / "03a01Fb.wav", np.zeros(1600))  # a second version of a sentence
    result = emodb.index(tmp_path)
    assert_well_formed(result)
    assert Counter(clip.label for clip in result.clips) == {
        "anger": 4,
        "disgust": 4,
        "fear": 4,
        "happiness": 5,
        "sadness": 4,
    }
    assert Counter(rule for _, rule in result.excluded) == {
        "class boredom not in classes": 4,
        "class neutral not in classes": 4,
    }
    assert result.other_files == 3 and result.files_found == 2 * 7 * 2 + 1 + 3
    clip = {clip.clip_id: clip for clip in result.clips}["16b10Ta"]
    assert (clip.subject, clip.label) == ("speaker_16", "sadness")
    assert clip.extra == {"text": "b10", "version": "a", "emotion_code": "T", "gender": "female"}
    assert decode_clip(clip.path, sample_rate=SAMPLE_RATE, with_video=False).audio.shape == (3200,)
    every = emodb.index(tmp_path, classes=tuple(emodb.EMOTIONS.values()))
    assert len(every.clips) == 2 * 7 * 2 + 1 and every.excluded == [] and every.notes == []
    assert {clip.label for clip in every.clips if clip.extra["emotion_code"] == "L"} == {"boredom"}


def test_emodb_malformed_names_raise_or_are_skipped(tmp_path):
    make_emodb_with_every_class(tmp_path)
    for bad in ("03a01Xa.wav", "05a01Wa.wav", "03a1Wa.wav", "03a01W.wav"):
        write_wav(tmp_path / "wav" / bad, np.zeros(160))
    with pytest.raises(CorpusLayoutError) as error:
        emodb.index(tmp_path, on_error="raise")
    message = str(error.value)
    assert "4 file(s)" in message and "<root>/wav/<speaker><text><emotion><version>.wav" in message
    assert "emotion letter X" in message and "speaker 05" in message
    assert str(tmp_path / "wav" / "03a1Wa.wav") in message
    result = emodb.index(tmp_path)
    assert len(result.clips) == 2 * 5 * 2
    assert sorted(Path(path).name for path, _ in result.skipped) == [
        "03a01W.wav",
        "03a01Xa.wav",
        "03a1Wa.wav",
        "05a01Wa.wav",
    ]
    with pytest.raises(ValueError, match="surprise"):
        emodb.index(tmp_path, classes=("anger", "surprise"))
