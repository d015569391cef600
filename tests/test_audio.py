"""Audio decoding: any rate/format/channels -> 16 kHz mono float32 with pitch kept; unusable files named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from mmser.data.audio import audio_problem, load_audio
from mmser.data.prepare import check_audio
from mmser.data.records import DropLog, Utterance

TARGET = 16000


def _sine(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1.0 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize(("rate", "subtype", "fmt", "channels", "seconds"), [
    (48000, "PCM_16", "WAV", 2, 1.0),
    (22050, "PCM_24", "WAV", 1, 1.3),
    (16000, "PCM_32", "WAV", 1, 0.75),
    (16000, "FLOAT", "WAV", 1, 1.1),
    (32000, "FLOAT", "WAV", 1, 0.9),
    (44100, "PCM_16", "FLAC", 1, 1.25),
])
def test_load_audio_gives_16k_mono_float32_with_pitch_kept(tmp_path: Path, rate: int, subtype: str, fmt: str,
                                                           channels: int, seconds: float) -> None:
    mono = _sine(rate, seconds)
    data = np.stack([mono, 0.6 * mono], axis=1) if channels == 2 else mono
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, data, rate, subtype=subtype, format=fmt)

    wave = load_audio(str(path))
    assert wave.dtype == np.float32
    assert wave.ndim == 1
    assert abs(len(wave) - round(seconds * TARGET)) <= 2
    assert abs(_peak_hz(wave, TARGET) - 440.0) <= 1.5
    # Stereo is averaged: amplitude (0.5 + 0.3) / 2; mono keeps 0.5 (away from resampler edge effects).
    expected_amp = 0.4 if channels == 2 else 0.5
    middle = wave[len(wave) // 4:3 * len(wave) // 4]
    assert np.max(np.abs(middle)) == pytest.approx(expected_amp, abs=0.01)
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(expected_amp / np.sqrt(2), rel=0.02)


def test_load_audio_at_16k_is_unchanged(tmp_path: Path) -> None:
    wave = _sine(TARGET, 0.5).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, TARGET, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(str(tmp_path / "a.wav")), wave)


def test_audio_problem_reasons(tmp_path: Path) -> None:
    sf.write(tmp_path / "empty.wav", np.zeros(0), TARGET, subtype="PCM_16")
    sf.write(tmp_path / "silent.wav", np.zeros(TARGET), TARGET, subtype="PCM_16")
    (tmp_path / "text.wav").write_text("this is not audio\n")
    sf.write(tmp_path / "good.wav", _sine(22050, 1.5), 22050, subtype="PCM_16")

    assert audio_problem(str(tmp_path / "empty.wav")) == ("empty", 0.0)
    assert audio_problem(str(tmp_path / "silent.wav")) == ("silent", 1.0)
    problem, duration = audio_problem(str(tmp_path / "text.wav"))
    assert problem is not None and problem.startswith("undecodable: ")
    assert "\n" not in problem
    assert duration == 0.0
    problem, duration = audio_problem(str(tmp_path / "good.wav"))
    assert problem is None
    assert duration == pytest.approx(1.5, abs=2 / TARGET)
    problem, _ = audio_problem(str(tmp_path / "absent.wav"))
    assert problem is not None and problem.startswith("undecodable: ")


@pytest.fixture
def clips(tmp_path: Path) -> list[Utterance]:
    """A good clip, a short one, and three unusable files, as utterances."""
    sf.write(tmp_path / "good.wav", _sine(TARGET, 1.2), TARGET, subtype="PCM_16")
    sf.write(tmp_path / "short.wav", _sine(48000, 0.5), 48000, subtype="PCM_16")
    sf.write(tmp_path / "empty.wav", np.zeros(0), TARGET, subtype="PCM_16")
    sf.write(tmp_path / "silent.wav", np.zeros(TARGET), TARGET, subtype="PCM_16")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    names = ["good", "short", "empty", "silent", "broken"]
    return [Utterance(id=n, path=str(tmp_path / f"{n}.wav"), text=f"text {n}", label="ang", speaker="s1",
                      session="Session1", meta={"dialog": "d1"}) for n in names]


def test_check_audio_pads_short_clips(clips: list[Utterance]) -> None:
    drops = DropLog()
    table = check_audio(clips, short_clips="pad", min_duration=0.96, drops=drops)
    assert list(table["id"]) == ["good", "short"]
    assert list(table["padded"]) == [False, True]
    assert list(table["duration"]) == pytest.approx([1.2, 0.5], abs=1e-3)
    assert list(table["meta_dialog"]) == ["d1", "d1"]
    assert {e["id"]: e["reason"] for e in drops.entries} == {
        "empty": "empty", "silent": "silent", "broken": "undecodable"}
    broken = next(e for e in drops.entries if e["id"] == "broken")["detail"]
    assert broken.startswith(f"{clips[4].path}: undecodable: ")  # the report names the file
    assert len(table) + len(drops.entries) == len(clips)


def test_check_audio_drops_short_clips(clips: list[Utterance]) -> None:
    drops = DropLog()
    table = check_audio(clips, short_clips="drop", min_duration=0.96, drops=drops)
    assert list(table["id"]) == ["good"]
    assert list(table["padded"]) == [False]
    assert {e["id"]: e["reason"] for e in drops.entries} == {
        "short": "short", "empty": "empty", "silent": "silent", "broken": "undecodable"}
    assert drops.counts() == {"empty": 1, "short": 1, "silent": 1, "undecodable": 1}
    assert len(table) + len(drops.entries) == len(clips)


def test_check_audio_with_nothing_usable_keeps_columns(clips: list[Utterance]) -> None:
    table = check_audio(clips[2:], short_clips="pad", min_duration=0.96, drops=DropLog())
    assert len(table) == 0
    assert {"id", "path", "label", "speaker", "session", "duration", "padded"} <= set(table.columns)


def test_non_finite_samples_are_unusable(tmp_path: Path) -> None:
    wave = _sine(TARGET, 1.0).astype(np.float32)
    wave[100] = np.nan
    sf.write(tmp_path / "nan.wav", wave, TARGET, subtype="FLOAT")
    assert audio_problem(str(tmp_path / "nan.wav")) == ("non_finite_samples", 1.0)
    utt = Utterance(id="nan", path=str(tmp_path / "nan.wav"), text="t", label="ang", speaker="s", session="")
    drops = DropLog()
    table = check_audio([utt], short_clips="pad", min_duration=0.96, drops=drops)
    assert len(table) == 0
    assert drops.counts() == {"non_finite_samples": 1}


def test_text_only_utterances_skip_the_audio_check(clips: list[Utterance]) -> None:
    text_only = Utterance(id="t", path="", text="no audio here", label="neu", speaker="s2", session="Session1")
    drops = DropLog()
    table = check_audio([clips[0], text_only], short_clips="drop", min_duration=0.96, drops=drops)
    assert table["id"].tolist() == ["good", "t"] and drops.entries == []
    assert table.loc[1, "path"] == "" and pd.isna(table.loc[1, "duration"]) and not table.loc[1, "padded"]


def test_the_check_streams_blocks_and_sees_every_one(tmp_path: Path, monkeypatch) -> None:
    """Decoded in blocks (memory stays flat on long files): a NaN or the signal in a later block still counts."""
    import mmser.data.audio as audio

    monkeypatch.setattr(audio, "SCAN_BLOCK", 1000)
    late_nan = np.full(TARGET, 0.1, np.float32)
    late_nan[-5] = np.nan
    late_signal = np.zeros(TARGET, np.float32)
    late_signal[-500:] = _sine(TARGET, 1.0)[:500]
    sf.write(tmp_path / "late_nan.wav", late_nan, TARGET, subtype="FLOAT")
    sf.write(tmp_path / "late_signal.wav", late_signal, TARGET, subtype="FLOAT")
    stereo = np.stack([_sine(TARGET, 1.0), -_sine(TARGET, 1.0)], axis=1)  # channels cancel: silent in mono
    sf.write(tmp_path / "cancel.wav", stereo, TARGET, subtype="FLOAT")
    assert audio_problem(str(tmp_path / "late_nan.wav")) == ("non_finite_samples", 1.0)
    assert audio_problem(str(tmp_path / "late_signal.wav")) == (None, 1.0)
    assert audio_problem(str(tmp_path / "cancel.wav")) == ("silent", 1.0)
