"""Deterministic synthetic demo corpus in the IEMOCAP_full_release layout.

IEMOCAP is licensed and cannot be shipped, so the default pipeline runs on this corpus, parsed by
the same reader as the real data. It is a demo and a test bed, not a benchmark.

The signal is built so the two modalities are informative but complementary:
- audio (prosody, voice quality) mainly carries *arousal*: ang/hap vs sad/neu are easy, while
  ang<->hap and sad<->neu differ only by weak cues;
- text (wording) mainly carries *valence*: ang/sad share a negative pool and hap/neu a
  positive/neutral pool, with class-specific words only some of the time.
So each modality alone confuses a different pair, and fusion beats both.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

SESSIONS = (1, 2, 3, 4, 5)
GENDERS = ("F", "M")
TARGET_LABELS = ("ang", "hap", "sad", "neu")  # "hap" here stands for the merged hap/exc class
DROPPED_LABELS = ("fru", "sur", "xxx", "fea", "oth", "dis")
DROPPED_SHARE = 0.08  # roughly the share we want of labels the paper drops
EMOEVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"

# Categorical names as the IEMOCAP evaluators wrote them.
EVALUATOR_NAMES = {
    "ang": "Anger", "hap": "Happiness", "exc": "Excited", "sad": "Sadness", "neu": "Neutral",
    "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "oth": "Other", "dis": "Disgust",
}
# Mean (valence, arousal, dominance) on IEMOCAP's 1-5 scale, used for the block's VAD triple.
VAD_MEANS = {
    "ang": (1.8, 4.0, 4.0), "hap": (4.0, 3.4, 3.2), "exc": (4.0, 3.8, 3.4), "sad": (2.0, 2.0, 2.2),
    "neu": (3.0, 2.5, 2.7), "fru": (2.0, 3.2, 3.2), "sur": (3.2, 3.8, 3.0), "fea": (2.0, 3.5, 2.2),
    "oth": (3.0, 3.0, 3.0), "dis": (2.0, 3.2, 3.4), "xxx": (2.6, 3.0, 3.0),
}


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prosody:
    """Emotion-dependent prosody and voice-quality settings."""

    pitch_st: float  # F0 level, semitones above the speaker's base pitch
    range_st: float  # per-syllable pitch excursion, semitones
    rate_hz: float  # syllables per second
    gain_db: float  # loudness relative to neutral
    open_quotient: float  # glottal open phase share: low = tense/pressed, high = lax/breathy
    breathiness: float  # aspiration noise mixed into the source


# Arousal is carried by level, energy and rate (large gaps between the pairs); the within-pair
# cues (range, voice quality) are deliberately small so audio mostly confuses ang<->hap, sad<->neu.
PROSODY = {
    "ang": Prosody(pitch_st=4.0, range_st=3.2, rate_hz=5.3, gain_db=8.5, open_quotient=0.40,
                   breathiness=0.04),
    "hap": Prosody(pitch_st=4.4, range_st=4.4, rate_hz=4.9, gain_db=7.0, open_quotient=0.50,
                   breathiness=0.05),
    "neu": Prosody(pitch_st=0.0, range_st=1.8, rate_hz=3.9, gain_db=0.0, open_quotient=0.60,
                   breathiness=0.08),
    "sad": Prosody(pitch_st=-1.2, range_st=1.3, rate_hz=3.4, gain_db=-2.0, open_quotient=0.68,
                   breathiness=0.16),
}
# Dropped labels reuse a nearby prosody: they are excluded downstream anyway.
PROSODY_CLASS = {"exc": "hap", "fru": "ang", "sur": "hap", "fea": "ang", "dis": "ang",
                 "oth": "neu", "xxx": "neu"}

# Vowel formants (F1, F2, F3, F4) in Hz for an adult male vocal tract; one set per syllable.
VOWEL_FORMANTS = np.array([
    [730, 1090, 2440, 3400],  # a
    [270, 2290, 3010, 3600],  # i
    [300, 870, 2240, 3300],  # u
    [530, 1840, 2480, 3500],  # e
    [570, 840, 2410, 3300],  # o
    [660, 1720, 2410, 3400],  # ae
    [520, 1190, 2390, 3400],  # schwa
], dtype=np.float64)
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0])
STFT_SIZE = 512  # 32 ms at 16 kHz: fine enough for formants, short enough to track syllables
AROUSAL_SLIP = 0.08  # share of utterances voiced with the other arousal's prosody (blurs audio)


@dataclass(frozen=True)
class Voice:
    """A speaker's fixed vocal traits."""

    base_f0: float  # Hz
    formant_scale: float  # shorter vocal tract -> higher formants
    gain_db: float  # recording level of this speaker's microphone


def _speaker_voice(rng: np.random.Generator, gender: str) -> Voice:
    """Draw a speaker's traits; the spread makes speaker-independent evaluation meaningful."""
    base = 205.0 if gender == "F" else 115.0
    return Voice(
        base_f0=base * 2 ** (rng.normal(0.0, 1.6) / 12),
        formant_scale=(1.16 if gender == "F" else 1.0) * rng.uniform(0.95, 1.05),
        gain_db=rng.normal(0.0, 2.0),
    )


def _utterance_prosody(rng: np.random.Generator, label: str) -> Prosody:
    """Jitter the class prosody per utterance so classes overlap, as real speech does."""
    name = PROSODY_CLASS.get(label, label)
    if rng.random() < AROUSAL_SLIP:
        # An occasional calm angry or lively sad turn keeps audio from being a perfect arousal cue.
        name = {"ang": "neu", "hap": "neu", "sad": "hap", "neu": "hap"}[name]
    base = PROSODY[name]
    return Prosody(
        pitch_st=base.pitch_st + rng.normal(0.0, 1.3),
        range_st=max(0.3, base.range_st * rng.lognormal(0.0, 0.3)),
        rate_hz=base.rate_hz * rng.lognormal(0.0, 0.12),
        gain_db=base.gain_db + rng.normal(0.0, 2.5),
        open_quotient=float(np.clip(base.open_quotient + rng.normal(0.0, 0.06), 0.3, 0.85)),
        breathiness=max(0.0, base.breathiness * rng.lognormal(0.0, 0.4)),
    )


def _syllable_bounds(rng: np.random.Generator, n_samples: int, rate_hz: float,
                     sample_rate: int) -> np.ndarray:
    """Syllable boundaries (sample indices) with gamma-distributed lengths around 1/rate."""
    mean_len = sample_rate / rate_hz
    lengths = rng.gamma(8.0, mean_len / 8.0, size=int(n_samples / mean_len * 2) + 4)
    bounds = np.concatenate([[0.0], np.cumsum(lengths)])
    bounds = bounds[bounds < n_samples]
    return np.append(bounds, n_samples).astype(np.int64)


def _envelope(rng: np.random.Generator, bounds: np.ndarray,
              n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Syllable-rate envelopes (voicing, frication): a consonant gap, then a vowel bump."""
    voiced = np.zeros(n_samples)
    frication = np.zeros(n_samples)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop - start < 16 or rng.random() < 0.08:  # short pause between words
            continue
        onset = start + int((stop - start) * rng.uniform(0.15, 0.35))
        bump = np.sin(np.linspace(0.0, np.pi, stop - onset)) ** 0.7
        voiced[onset:stop] = bump * rng.uniform(0.6, 1.0)
        if rng.random() < 0.5:  # a fricative consonant (s, f, sh) fills the gap half the time
            frication[start:onset] = np.hanning(onset - start) * rng.uniform(0.1, 0.3)
    return voiced, frication


def _f0_contour(rng: np.random.Generator, bounds: np.ndarray, n_samples: int, voice: Voice,
                prosody: Prosody) -> np.ndarray:
    """F0 in Hz per sample: level + per-syllable accents + declination, interpolated smoothly."""
    centres = (bounds[:-1] + bounds[1:]) / 2.0
    accents = prosody.range_st * rng.uniform(-1.0, 1.0, size=len(centres))
    t = np.arange(n_samples)
    semitones = np.interp(t, centres, accents) if len(centres) > 1 else np.full(n_samples,
                                                                                  accents[0])
    semitones += prosody.pitch_st - 2.0 * t / n_samples  # declination across the phrase
    return voice.base_f0 * 2 ** (semitones / 12)


def _glottal_source(rng: np.random.Generator, f0: np.ndarray, prosody: Prosody,
                    sample_rate: int) -> np.ndarray:
    """Differentiated Rosenberg pulse train with per-cycle jitter and shimmer."""
    phase = np.cumsum(f0 / sample_rate)
    cycles = phase.astype(np.int64)
    n_cycles = int(cycles[-1]) + 2
    jitter = 1.0 + 0.012 * rng.standard_normal(n_cycles)
    phase = np.cumsum(f0 * jitter[cycles] / sample_rate)
    cycles = phase.astype(np.int64)
    frac = phase - cycles
    oq = prosody.open_quotient
    rise, fall = 0.6 * oq, 0.4 * oq
    flow = np.where(frac < rise, 0.5 * (1 - np.cos(np.pi * frac / rise)), 0.0)
    closing = (frac >= rise) & (frac < oq)
    flow = np.where(closing, np.cos(0.5 * np.pi * (frac - rise) / fall), flow)
    shimmer = 1.0 + 0.08 * rng.standard_normal(int(cycles[-1]) + 2)
    pulse = np.diff(flow, prepend=0.0) * shimmer[cycles]
    pulse /= np.sqrt(np.mean(pulse**2)) + 1e-9
    # Aspiration noise is strongest in the open phase, as in a breathy voice.
    aspiration = rng.standard_normal(len(f0)) * (0.3 + 0.7 * (frac < oq))
    return pulse + 2.0 * prosody.breathiness * aspiration


def _formant_filter(rng: np.random.Generator, source: np.ndarray, bounds: np.ndarray,
                    voice: Voice, sample_rate: int) -> np.ndarray:
    """Shape the source with vowel formants that change per syllable (STFT overlap-add)."""
    hop = STFT_SIZE // 2
    n_frames = (len(source) + STFT_SIZE) // hop + 1
    padded = np.zeros((n_frames + 1) * hop + STFT_SIZE)
    padded[STFT_SIZE // 2:STFT_SIZE // 2 + len(source)] = source
    window = np.sqrt(np.hanning(STFT_SIZE + 1)[:-1])  # sqrt-Hann in and out: perfect overlap-add
    index = np.arange(n_frames)[:, None] * hop + np.arange(STFT_SIZE)[None, :]
    spectra = np.fft.rfft(padded[index] * window, axis=1)

    vowels = VOWEL_FORMANTS[rng.integers(0, len(VOWEL_FORMANTS), size=len(bounds) - 1)]
    centres = (bounds[:-1] + bounds[1:]) / 2.0
    frame_pos = np.arange(n_frames) * hop  # frame i is centred on source sample i * hop
    formants = np.stack([np.interp(frame_pos, centres, vowels[:, k]) for k in range(4)], axis=1)
    formants *= voice.formant_scale
    freqs = np.fft.rfftfreq(STFT_SIZE, 1.0 / sample_rate)[None, :, None]
    fk, bk = formants[:, None, :], FORMANT_BANDWIDTHS[None, None, :]
    # Analog two-pole resonator magnitude per formant, multiplied (cascade model).
    response = np.prod(fk**2 / np.sqrt((fk**2 - freqs**2) ** 2 + (bk * freqs) ** 2), axis=2)
    frames = np.fft.irfft(spectra * response, n=STFT_SIZE, axis=1) * window

    out = np.zeros_like(padded)
    _overlap_add(out, frames, hop)
    return out[STFT_SIZE // 2:STFT_SIZE // 2 + len(source)]


def _overlap_add(out: np.ndarray, frames: np.ndarray, hop: int) -> None:
    """Sum frames at hop spacing; two strided adds because hop is half the frame."""
    size = frames.shape[1]
    for offset in range(size // hop):
        chunk = frames[:, offset * hop:(offset + 1) * hop].reshape(-1)
        out[offset * hop:offset * hop + len(chunk)] += chunk


def synthesize_utterance(rng: np.random.Generator, label: str, voice: Voice, n_samples: int,
                         sample_rate: int) -> np.ndarray:
    """Speech-like waveform whose prosody and voice quality depend on the emotion label."""
    prosody = _utterance_prosody(rng, label)
    bounds = _syllable_bounds(rng, n_samples, prosody.rate_hz, sample_rate)
    f0 = _f0_contour(rng, bounds, n_samples, voice, prosody)
    source = _glottal_source(rng, f0, prosody, sample_rate)
    speech = _formant_filter(rng, source, bounds, voice, sample_rate)
    voiced, frication = _envelope(rng, bounds, n_samples)
    hiss = np.diff(rng.standard_normal(n_samples + 1)) / 2.0  # differenced noise tilts it high
    speech = speech / (np.sqrt(np.mean(speech**2)) + 1e-9) * voiced + hiss * frication
    speech /= np.sqrt(np.mean(speech**2)) + 1e-9
    level = 10 ** ((prosody.gain_db + voice.gain_db - 26.0) / 20)  # about -26 dBFS for neutral
    # Breath in the pauses and a quiet room floor, both independent of the emotion.
    breath = 0.003 * rng.standard_normal(n_samples) * (1.0 - voiced)
    signal = level * speech + breath + 0.001 * rng.standard_normal(n_samples)
    return np.clip(signal, -1.0, 1.0)


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------

# Pools are picked per utterance: class-specific wording only some of the time, the shared
# valence pool most of the time, and an ambiguous pool that says nothing about the emotion.
TEXT_POOL_WEIGHTS = {"specific": 0.32, "shared": 0.52, "ambiguous": 0.16}
SHARED_POOL = {"ang": "negative", "sad": "negative", "hap": "positive", "neu": "positive"}

SLOTS = {
    "person": ["he", "she", "your brother", "my mother", "the landlord", "Tom", "Sarah",
               "your boss"],
    "thing": ["the car", "the keys", "the tickets", "the report", "the house", "the phone",
              "the job", "the money", "the dinner"],
    "time": ["today", "this morning", "last night", "this week", "again", "on Friday"],
    "place": ["on the desk", "in the car", "at the office", "by the door", "in the kitchen"],
}

TEXT_POOLS: dict[str, list[str]] = {
    "negative": [
        "I can't believe this happened {time}.",
        "Nothing is working out the way it should.",
        "Why does this keep happening to me?",
        "It's been a terrible week, honestly.",
        "I lost {thing} {time}.",
        "{person} didn't even call me back.",
        "This is the worst thing that could have happened.",
        "Everything went wrong {time}.",
        "I don't want to talk about {thing} anymore.",
        "It's all falling apart, isn't it?",
        "You said it would be fine and it wasn't.",
        "We can't afford {thing} now.",
        "I waited all day and nobody came.",
        "That's not what we agreed on.",
    ],
    "positive": [
        "Sure, that sounds fine to me.",
        "Okay, let's do that {time}.",
        "Yeah, I think that works.",
        "That's a nice idea, actually.",
        "{person} said it went well.",
        "We can pick up {thing} later.",
        "I got {thing} sorted out {time}.",
        "Alright, I'll see you then.",
        "It was good to see {person}.",
        "Fine, we'll take {thing}.",
        "Yes, that's right.",
        "I think we're all set.",
        "Thanks, that helps.",
        "Good, I'm glad it worked.",
    ],
    "ang": [
        "I'm so sick of your excuses!",
        "Don't you dare talk to me like that!",
        "Get out of my way, I'm furious!",
        "This is completely unacceptable!",
        "You never listen to me, damn it!",
        "Shut up and give me {thing}!",
        "I'm fed up with {person} and this ridiculous mess!",
        "How dare you lie to me!",
        "I swear, if you touch {thing} again I'll scream!",
    ],
    "sad": [
        "I miss {person} so much.",
        "I just feel so alone.",
        "I can't stop crying.",
        "She's gone and she's not coming back.",
        "I don't know how to go on without him.",
        "Nobody cares about me anymore.",
        "It hurts so much, I feel empty.",
        "I wish things could go back to how they were.",
        "My heart is broken since {person} left.",
    ],
    "hap": [
        "This is the best day of my life!",
        "I'm so excited, we did it!",
        "I love it, thank you so much!",
        "Oh wow, that's wonderful news!",
        "We're getting married!",
        "I got the job, can you believe it? Amazing!",
        "That's fantastic, I'm thrilled for {person}!",
        "Yay, we're going to Hawaii!",
        "I'm so happy you came!",
    ],
    "neu": [
        "The meeting is at three o'clock.",
        "I left {thing} {place}.",
        "Can you hand me that file?",
        "Let me check the schedule first.",
        "My flight leaves on Tuesday.",
        "The forms are {place}.",
        "I need to fill in the application.",
        "{person} is at the office until five.",
        "Please take a number and wait in line.",
    ],
    "ambiguous": [
        "What do you mean?",
        "I don't know.",
        "Are you serious?",
        "Really?",
        "Well, here we are.",
        "So that's it, then.",
        "I didn't expect that.",
        "Tell me what happened with {thing}.",
        "Wait, what?",
        "Okay.",
        "Is that what {person} said?",
        "Hmm, I see.",
    ],
}
PROPER_WORDS = {"I", "Tom", "Sarah"}  # stay capitalised after a filler
FILLERS = ["", "", "", "Well, ", "Look, ", "Oh, ", "You know, ", "I mean, ", "Yeah, "]
TEXT_POOL_OF_DROPPED = {"fru": "negative", "sur": "ambiguous", "xxx": "ambiguous",
                        "fea": "negative", "oth": "ambiguous", "dis": "negative"}


def _fill_slots(rng: np.random.Generator, template: str) -> str:
    """Replace each {slot} with a random choice so templates give varied sentences."""
    values = {name: choices[rng.integers(len(choices))] for name, choices in SLOTS.items()}
    return template.format(**values)


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[rng.integers(len(items))]


def sentence_for(rng: np.random.Generator, label: str) -> str:
    """An English sentence whose wording carries mostly valence, sometimes the exact emotion."""
    if label in TEXT_POOL_OF_DROPPED:
        pool = TEXT_POOL_OF_DROPPED[label]
    else:
        key = "hap" if label == "exc" else label
        kinds = list(TEXT_POOL_WEIGHTS)
        kind = kinds[rng.choice(len(kinds), p=list(TEXT_POOL_WEIGHTS.values()))]
        pool = {"specific": key, "shared": SHARED_POOL[key], "ambiguous": "ambiguous"}[kind]
    text = _fill_slots(rng, _pick(rng, TEXT_POOLS[pool]))
    filler = _pick(rng, FILLERS)
    if not filler:
        return text
    first_word = re.split(r"[ ',]", text, maxsplit=1)[0]
    return filler + (text if first_word in PROPER_WORDS else text[0].lower() + text[1:])


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


@dataclass
class Turn:
    """One line of a dialog: an utterance to write, or a line a reader must skip."""

    utt_id: str
    start: float
    end: float
    text: str
    label: str | None  # None for XX lines, which get no wav and no evaluation block
    gender: str


def _dropped_counts(rng: np.random.Generator, n: int) -> dict[str, int]:
    """Dropped-label count per speaker: ~8%, and at least one per session so readers meet one."""
    counts = {g: round(DROPPED_SHARE * n) for g in GENDERS}
    if n >= 2 and not any(counts.values()):
        counts[GENDERS[int(rng.integers(2))]] = 1
    return counts


def _session_labels(rng: np.random.Generator, n: int, n_dropped: int) -> list[str]:
    """n labels for one speaker: n_dropped dropped, the rest balanced over 4 classes (hap|exc)."""
    n_target = n - n_dropped
    classes = np.tile(np.arange(4), n_target // 4 + 1)[:n_target]
    labels = [TARGET_LABELS[c] for c in rng.permutation(4)[classes]]
    # hap and exc are one class downstream; split it so both spellings occur, like the real data.
    labels = [("exc" if rng.random() < 0.5 else "hap") if lab == "hap" else lab for lab in labels]
    labels += [DROPPED_LABELS[rng.integers(len(DROPPED_LABELS))] for _ in range(n_dropped)]
    return [labels[i] for i in rng.permutation(n)]


def _dialog_names(session: int, n_dialogs: int) -> list[str]:
    """Improvised and scripted dialog names, alternating which actor wore the markers."""
    names = []
    for i in range(n_dialogs):
        gender = GENDERS[i % 2]
        kind = f"impro{i // 2 + 1:02d}" if i % 4 < 2 else f"script{i // 4 + 1:02d}_{i % 2 + 1}"
        names.append(f"Ses{session:02d}{gender}_{kind}")
    return names


def _time_tag(seconds: float) -> str:
    return f"{seconds:.4f}"


def _layout_dialog(rng: np.random.Generator, dialog: str,
                   turns: list[tuple[str, str]]) -> list[Turn]:
    """Place turns (gender, label) on a timeline, numbering each speaker's turns in order."""
    counters = {"F": 0, "M": 0}
    xx_at = int(rng.integers(0, len(turns) + 1))
    clock = float(rng.uniform(2.0, 8.0))
    laid: list[Turn] = []
    for position in range(len(turns) + 1):
        if position == xx_at:  # one overlapping/unclear turn per dialog, as IEMOCAP marks XX
            gender = GENDERS[int(rng.integers(2))]
            start, clock = _advance(rng, clock)
            laid.append(Turn(f"{dialog}_{gender}XX0", start, clock,
                             sentence_for(rng, "xxx"), None, gender))
        if position == len(turns):
            break
        gender, label = turns[position]
        start, clock = _advance(rng, clock)
        utt_id = f"{dialog}_{gender}{counters[gender]:03d}"
        counters[gender] += 1
        laid.append(Turn(utt_id, start, clock, sentence_for(rng, label), label, gender))
    return laid


def _advance(rng: np.random.Generator, clock: float) -> tuple[float, float]:
    """Next turn's (start, end): a short gap, then 1.5-4.5 s of speech, on 4-decimal times."""
    start = round(clock + float(rng.uniform(0.2, 2.0)), 4)
    end = round(start + float(rng.uniform(1.5, 4.5)), 4)
    return start, end


def _plan_session(rng: np.random.Generator, session: int,
                  utterances_per_speaker: int) -> dict[str, list[Turn]]:
    """Split each speaker's labelled turns over the session's dialogs, both speakers in each."""
    # About ten turns per speaker per dialog, and never a dialog without both speakers.
    n_dialogs = min(int(np.clip(np.ceil(utterances_per_speaker / 10), 2, 6)),
                    utterances_per_speaker)
    names = _dialog_names(session, n_dialogs)
    per_dialog: list[list[tuple[str, str]]] = [[] for _ in names]
    dropped = _dropped_counts(rng, utterances_per_speaker)
    for gender in GENDERS:
        labels = _session_labels(rng, utterances_per_speaker, dropped[gender])
        for k, label in enumerate(labels):
            per_dialog[k % n_dialogs].append((gender, label))
    return {name: _layout_dialog(rng, name, [turns[i] for i in rng.permutation(len(turns))])
            for name, turns in zip(names, per_dialog)}


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------

NON_UTTERANCE_LINES = ["M: [LAUGHTER]", "F: [BREATHING]", "M: [GARBAGE]"]


def _transcription_text(rng: np.random.Generator, turns: list[Turn]) -> str:
    """Transcript lines in IEMOCAP's format, with a non-utterance line a reader must skip."""
    lines = [f"{t.utt_id} [{t.start:08.4f}-{t.end:08.4f}]: {t.text}" for t in turns]
    lines.insert(int(rng.integers(0, len(lines) + 1)), _pick(rng, NON_UTTERANCE_LINES))
    return "\n".join(lines) + "\n"


def _vad(rng: np.random.Generator, label: str) -> tuple[float, float, float]:
    """Mean of two annotators' 1-5 ratings around the label's typical VAD (half-point steps)."""
    means = np.array(VAD_MEANS[label])
    votes = np.clip(np.round(means + rng.normal(0.0, 0.6, size=(2, 3))), 1, 5)
    return tuple(float(v) for v in votes.mean(axis=0))  # type: ignore[return-value]


def _evaluation_block(rng: np.random.Generator, turn: Turn) -> str:
    """One EmoEvaluation block: summary line, categorical votes, dimensional vote, blank line."""
    assert turn.label is not None
    val, act, dom = _vad(rng, turn.label)
    head = (f"[{_time_tag(turn.start)} - {_time_tag(turn.end)}]\t{turn.utt_id}\t{turn.label}\t"
            f"[{val:.4f}, {act:.4f}, {dom:.4f}]")
    if turn.label == "xxx":  # no majority: the evaluators disagreed
        votes = [EVALUATOR_NAMES[x] for x in rng.choice(["neu", "fru", "sur", "ang"], 3, False)]
    else:
        agree = EVALUATOR_NAMES[turn.label]
        votes = [agree, agree, _pick(rng, [agree, "Neutral", "Frustration", "Other"])]
    evaluators = [f"C-E{k}:\t{v};\t()" for k, v in zip((1, 2, 4), votes)]
    evaluators.append(f"A-E3:\tval {round(val)}; act {round(act)}; dom  {round(dom)};\t()")
    return "\n".join([head, *evaluators]) + "\n"


def _emo_evaluation_text(rng: np.random.Generator, turns: list[Turn]) -> str:
    blocks = [_evaluation_block(rng, t) for t in turns if t.label is not None]
    return EMOEVAL_HEADER + "\n\n" + "\n".join(blocks) + "\n"


def _write_dialog(rng: np.random.Generator, session_dir: Path, dialog: str, turns: list[Turn],
                  voices: dict[str, Voice], sample_rate: int) -> None:
    """Write one dialog's transcript, evaluation file and wavs."""
    (session_dir / "dialog" / "transcriptions" / f"{dialog}.txt").write_text(
        _transcription_text(rng, turns))
    (session_dir / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text(
        _emo_evaluation_text(rng, turns))
    wav_dir = session_dir / "sentences" / "wav" / dialog
    wav_dir.mkdir(parents=True, exist_ok=True)
    for turn in turns:
        if turn.label is None:
            continue
        n_samples = int(round((turn.end - turn.start) * sample_rate))
        audio = synthesize_utterance(rng, turn.label, voices[turn.gender], n_samples, sample_rate)
        sf.write(wav_dir / f"{turn.utt_id}.wav", audio, sample_rate, subtype="PCM_16")


def generate_demo_corpus(root: Path, *, seed: int, utterances_per_speaker: int,
                         sample_rate: int = 16000) -> dict[str, int]:
    """Write a deterministic synthetic corpus in the IEMOCAP_full_release layout under `root`; return counts."""
    if utterances_per_speaker < 1:
        raise ValueError(f"utterances_per_speaker must be >= 1, got {utterances_per_speaker}")
    began = time.perf_counter()
    root = Path(root)
    counts = {"sessions": 0, "dialogs": 0, "utterances": 0, "target_utterances": 0,
              "dropped_labels": 0, "xx_lines": 0, "non_utterance_lines": 0}
    for session in SESSIONS:
        # One generator per session, derived from (seed, session): sessions stay independent.
        rng = np.random.default_rng([seed, session])
        session_dir = root / f"Session{session}"
        for sub in ("transcriptions", "EmoEvaluation"):
            (session_dir / "dialog" / sub).mkdir(parents=True, exist_ok=True)
        voices = {g: _speaker_voice(rng, g) for g in GENDERS}
        plan = _plan_session(rng, session, utterances_per_speaker)
        for dialog, turns in plan.items():
            _write_dialog(rng, session_dir, dialog, turns, voices, sample_rate)
            labels = [t.label for t in turns if t.label is not None]
            counts["utterances"] += len(labels)
            counts["dropped_labels"] += sum(lab in DROPPED_LABELS for lab in labels)
            counts["xx_lines"] += len(turns) - len(labels)
            counts["non_utterance_lines"] += 1
        counts["sessions"] += 1
        counts["dialogs"] += len(plan)
    counts["target_utterances"] = counts["utterances"] - counts["dropped_labels"]
    log.info("demo corpus: %d utterances (%d target, %d dropped labels, %d XX lines) in %s, %.1f s",
             counts["utterances"], counts["target_utterances"], counts["dropped_labels"],
             counts["xx_lines"], root, time.perf_counter() - began)
    return counts
